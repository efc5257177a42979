//! Orfeas web UI (leptos, client-side rendered). It holds no model code: the engine runs in its
//! own bundle in a Web Worker, started only after this UI has painted.

mod ui;

fn main() {
    leptos::mount::mount_to_body(ui::App);
    ui::after_first_paint();
}
