//! What the engine reports and its front-ends show, declared once: the engine produces these,
//! the server and the CLI print them, and the web app's worker sends them to the UI as they
//! are. Serde only (no burn, no engine), so the UI bundle can link them and stay small.
//!
//! Enums are externally tagged (`{"sampling": {…}}`, `"meshing"`): the UI parses them without
//! buffering, which keeps its bundle small (see the app's `protocol`).

mod progress;
mod stage;

pub use progress::{LoadProgress, Phase};
pub use stage::Stage;
