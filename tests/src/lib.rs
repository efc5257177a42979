//! End-to-end tests of Orfeas as users meet it: a real Chromium driving the web app and a real
//! HTTP client against the `orfeas` server. They arrive with the web-app and server work; the
//! engine's own streaming tests live in `engine/tests`, the CLI's in `native/tests`.
