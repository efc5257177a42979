//! Orfeas web UI (leptos, client-side rendered). It holds no model code: the engine runs in
//! its own bundle, so this one stays small and paints at once.

use leptos::prelude::*;

fn main() {
    leptos::mount::mount_to_body(App);
}

#[component]
fn App() -> impl IntoView {
    view! {
        <header class="top">
            <h1>"Orfeas"</h1>
            <span class="tagline">"image to 3D, on your own GPU"</span>
        </header>
        <main class="studio">
            <ImageDrop />
            <ModelPanel />
            <ViewerArea />
        </main>
    }
}

/// Where the user drops or picks an image; shows the chosen file's name.
#[component]
fn ImageDrop() -> impl IntoView {
    let (file_name, set_file_name) = signal(None::<String>);
    let on_change = move |ev: leptos::ev::Event| {
        let name = event_target_value(&ev);
        let name = name
            .rsplit(['/', '\\'])
            .next()
            .unwrap_or_default()
            .to_string();
        set_file_name.set((!name.is_empty()).then_some(name));
    };
    view! {
        <section class="drop" data-testid="drop-zone">
            <label>
                "Drop an image here or "
                <input type="file" accept="image/png,image/jpeg,image/webp" on:change=on_change />
            </label>
            <p class="chosen">{move || file_name.get().unwrap_or_else(|| "no image chosen".into())}</p>
        </section>
    }
}

/// Model status; the streamed loading that fills it comes from the engine worker.
#[component]
fn ModelPanel() -> impl IntoView {
    view! {
        <section class="models" data-testid="model-panel">
            <h2>"Models"</h2>
            <p>"No model source configured."</p>
        </section>
    }
}

#[component]
fn ViewerArea() -> impl IntoView {
    view! {
        <section class="viewer" data-testid="viewer">
            <p>"The 3D result appears here."</p>
        </section>
    }
}
