//! Which models the app loads and where from: same-origin `models/<id>/` by default, or a
//! config file (`orfeas.json` next to the app, or `?config=<same-origin url>`), or query
//! parameters (`?models=<base url>` for all, `?model.<id>=<url>` for one, `?models=none` for
//! none), so a kiosk or a CDN can serve them. A model URL on another origin is only used when
//! the site's own `orfeas.json` lists that origin in `allow_origins`: a link cannot make the
//! app load weights from wherever it likes.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelSpec {
    pub id: String,
    pub label: String,
    /// Base URL of the shard set (ends with `/`).
    pub url: String,
    /// What the model does in the app, decided here once (see [`Role`]).
    pub role: Role,
}

/// The parts of a converted shape model, in the order the engine takes them: the sub-folders
/// `orfeas convert` writes (the engine's `pipeline::COMPONENTS`; the UI bundle does not link
/// the engine, a test keeps the two equal).
pub const SHAPE_PARTS: [&str; 3] = ["conditioner", "denoiser", "vae"];

/// What a model does in the app. The config file may say so (`"role"`); otherwise it follows
/// from the id the converters write: `isnet…` removes backgrounds, `<name>/conditioner`,
/// `<name>/denoiser` and `<name>/vae` are the three parts of shape model `<name>`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Role {
    BackgroundRemoval,
    /// Part `part` (an index into [`SHAPE_PARTS`]) of shape model `model`.
    ShapePart {
        model: String,
        part: usize,
    },
    /// Loaded and reported, used by nothing (e.g. a test model).
    Other,
}

impl Role {
    /// What a model in this role is called when its config gives no label (the default list,
    /// the list `orfeas serve` writes from the folders it has).
    pub fn label(&self, id: &str) -> String {
        match self {
            Role::BackgroundRemoval => "Background removal".into(),
            Role::ShapePart { part, .. } => {
                let what = ["image encoder", "denoiser", "shape decoder"];
                format!(
                    "Shape model: {}",
                    what.get(*part).copied().unwrap_or("part")
                )
            }
            Role::Other => id.to_string(),
        }
    }

    /// The role a model's id implies.
    pub fn of_id(id: &str) -> Role {
        if id.starts_with("isnet") {
            return Role::BackgroundRemoval;
        }
        if let Some((model, part)) = id.rsplit_once('/')
            && let Some(part) = SHAPE_PARTS.iter().position(|c| *c == part)
        {
            return Role::ShapePart {
                model: model.to_string(),
                part,
            };
        }
        Role::Other
    }
}

/// The config file's shape.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConfigFile {
    /// Base for models without their own `url`.
    #[serde(default)]
    pub models_base: Option<String>,
    #[serde(default)]
    pub models: Option<Vec<ConfigModel>>,
    /// Origins (`scheme://host[:port]`) model URLs may point at besides the app's own.
    #[serde(default)]
    pub allow_origins: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConfigModel {
    pub id: String,
    #[serde(default)]
    pub label: Option<String>,
    #[serde(default)]
    pub url: Option<String>,
    /// Overrides the role the id implies (e.g. background removal under another id).
    #[serde(default)]
    pub role: Option<Role>,
}

/// The models of the product, loaded in this order (background removal is small and first).
/// `isnet-medium` is what `orfeas convert-isnet` writes, `hunyuan3d/{conditioner,denoiser,vae}`
/// what `orfeas convert -o hunyuan3d` writes (and `orfeas serve --models` serves both).
pub const DEFAULT_MODELS: [&str; 4] = [
    "isnet-medium",
    "hunyuan3d/conditioner",
    "hunyuan3d/denoiser",
    "hunyuan3d/vae",
];

pub const DEFAULT_BASE: &str = "models/";

fn with_slash(mut url: String) -> String {
    if !url.ends_with('/') {
        url.push('/');
    }
    url
}

/// The origin (`scheme://host[:port]`) of an absolute http(s) URL; `None` for a relative one.
pub fn origin_of(url: &str) -> Option<String> {
    let (scheme, rest) = url.split_once("://")?;
    let authority = rest.split(['/', '?', '#']).next()?;
    Some(format!(
        "{}://{}",
        scheme.to_ascii_lowercase(),
        authority.to_ascii_lowercase()
    ))
}

/// Whether `url` may be fetched by an app at `page_origin`: relative (`//host` included, as
/// another origin), same-origin, or on an origin the config allows.
pub fn allowed(url: &str, page_origin: &str, file: Option<&ConfigFile>) -> bool {
    if url.starts_with("//") {
        return false;
    }
    match origin_of(url) {
        None => !url.contains(':') || url.starts_with('/') || url.starts_with('.'),
        Some(origin) => {
            origin == page_origin.to_ascii_lowercase()
                || file.is_some_and(|f| {
                    f.allow_origins
                        .iter()
                        .any(|o| o.trim_end_matches('/').eq_ignore_ascii_case(&origin))
                })
        }
    }
}

/// The model list, split into what may load and what was refused (a URL on an origin the
/// site does not allow), for a notice.
pub struct Resolved {
    pub models: Vec<ModelSpec>,
    pub refused: Vec<ModelSpec>,
}

/// Resolve the model list from the config file (if any) and the page's query parameters
/// (which win), keeping only URLs this page may fetch (see [`allowed`]).
pub fn resolve_for(
    file: Option<&ConfigFile>,
    params: &[(String, String)],
    page_origin: &str,
) -> Resolved {
    let (models, refused) = resolve(file, params)
        .into_iter()
        .partition(|spec| allowed(&spec.url, page_origin, file));
    Resolved { models, refused }
}

/// Resolve the model list from the config file (if any) and the page's query parameters,
/// which win.
pub fn resolve(file: Option<&ConfigFile>, params: &[(String, String)]) -> Vec<ModelSpec> {
    let param = |key: &str| {
        params
            .iter()
            .rev()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.clone())
    };
    if param("models").as_deref() == Some("none") {
        return Vec::new();
    }
    let base = param("models")
        .or_else(|| file.and_then(|f| f.models_base.clone()))
        .map(with_slash)
        .unwrap_or_else(|| DEFAULT_BASE.to_string());
    let listed: Vec<ConfigModel> = match file.and_then(|f| f.models.clone()) {
        Some(models) => models,
        None => DEFAULT_MODELS
            .iter()
            .map(|id| ConfigModel {
                id: id.to_string(),
                label: None,
                url: None,
                role: None,
            })
            .collect(),
    };
    listed
        .into_iter()
        .map(|model| {
            let url = param(&format!("model.{}", model.id))
                .or(model.url)
                .map(with_slash)
                .unwrap_or_else(|| format!("{base}{}/", model.id));
            let role = model.role.unwrap_or_else(|| Role::of_id(&model.id));
            ModelSpec {
                label: model.label.unwrap_or_else(|| role.label(&model.id)),
                role,
                id: model.id,
                url,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn defaults_are_same_origin_per_model() {
        let models = resolve(None, &[]);
        assert_eq!(models.len(), 4);
        assert_eq!(models[0].id, "isnet-medium");
        assert_eq!(models[0].url, "models/isnet-medium/");
        assert_eq!(models[2].url, "models/hunyuan3d/denoiser/");
        assert_eq!(models[0].role, Role::BackgroundRemoval);
        let labels: Vec<&str> = models.iter().map(|m| m.label.as_str()).collect();
        assert_eq!(
            labels,
            [
                "Background removal",
                "Shape model: image encoder",
                "Shape model: denoiser",
                "Shape model: shape decoder"
            ]
        );
        let denoiser = Role::ShapePart {
            model: "hunyuan3d".into(),
            part: 1,
        };
        assert_eq!(models[2].role, denoiser);
    }

    #[test]
    fn shape_parts_are_the_engines() {
        assert_eq!(SHAPE_PARTS, orfeas_engine::pipeline::COMPONENTS);
    }

    #[test]
    fn the_config_file_may_name_a_role() {
        let file: ConfigFile = serde_json::from_str(
            r#"{"models":[{"id":"bg","role":"background-removal"},{"id":"tiny"},
                {"id":"a/b/vae"}]}"#,
        )
        .unwrap();
        let models = resolve(Some(&file), &[]);
        assert_eq!(models[0].role, Role::BackgroundRemoval);
        assert_eq!(models[1].role, Role::Other);
        let vae = Role::ShapePart {
            model: "a/b".into(),
            part: 2,
        };
        assert_eq!(models[2].role, vae);
    }

    #[test]
    fn query_parameters_override_the_file() {
        let file = ConfigFile {
            allow_origins: Vec::new(),
            models_base: Some("https://cdn.example/m".into()),
            models: Some(vec![ConfigModel {
                id: "tiny".into(),
                label: None,
                url: None,
                role: None,
            }]),
        };
        let models = resolve(Some(&file), &[]);
        assert_eq!(models[0].url, "https://cdn.example/m/tiny/");
        assert_eq!(models[0].label, "tiny");
        // Without labels (the list `orfeas serve` writes), a role names the model.
        let served: ConfigFile = serde_json::from_str(
            r#"{"models":[{"id":"isnet-medium"},{"id":"h/denoiser"}],"generated_by":"orfeas serve"}"#,
        )
        .unwrap();
        let models = resolve(Some(&served), &[]);
        assert_eq!(models[0].label, "Background removal");
        assert_eq!(models[1].label, "Shape model: denoiser");
        let models = resolve(Some(&file), &params(&[("models", "/kiosk")]));
        assert_eq!(models[0].url, "/kiosk/tiny/");
        let models = resolve(Some(&file), &params(&[("model.tiny", "/x/y")]));
        assert_eq!(models[0].url, "/x/y/");
        assert!(resolve(Some(&file), &params(&[("models", "none")])).is_empty());
    }

    #[test]
    fn other_origins_need_the_sites_own_allow_list() {
        let page = "http://127.0.0.1:8000";
        let hostile = params(&[("models", "https://evil.example/m")]);
        let resolved = resolve_for(None, &hostile, page);
        assert!(resolved.models.is_empty());
        assert_eq!(resolved.refused.len(), 4);
        let file = ConfigFile {
            allow_origins: vec!["https://cdn.example".into()],
            ..Default::default()
        };
        let cdn = params(&[("models", "https://cdn.example/m")]);
        assert_eq!(resolve_for(Some(&file), &cdn, page).models.len(), 4);
        assert!(resolve_for(Some(&file), &hostile, page).models.is_empty());
        assert!(allowed("models/x/", page, None));
        assert!(allowed("/models/x/", page, None));
        assert!(allowed("http://127.0.0.1:8000/models/x/", page, None));
        assert!(!allowed("//evil.example/x/", page, None));
        assert!(!allowed("javascript:alert(1)", page, None));
    }
}
