//! Which models the app loads and where from: same-origin `models/<id>/` by default, or a
//! config file (`orfeas.json` next to the app, or `?config=<url>`), or query parameters
//! (`?models=<base url>` for all, `?model.<id>=<url>` for one, `?models=none` for none), so a
//! kiosk or a CDN can serve them.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelSpec {
    pub id: String,
    pub label: String,
    /// Base URL of the shard set (ends with `/`).
    pub url: String,
}

/// The config file's shape.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConfigFile {
    /// Base for models without their own `url`.
    #[serde(default)]
    pub models_base: Option<String>,
    #[serde(default)]
    pub models: Option<Vec<ConfigModel>>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConfigModel {
    pub id: String,
    #[serde(default)]
    pub label: Option<String>,
    #[serde(default)]
    pub url: Option<String>,
}

/// The models of the product, loaded in this order (background removal is small and first).
/// `isnet-medium` is what `orfeas convert-isnet` writes, `hunyuan3d/{conditioner,denoiser,vae}`
/// what `orfeas convert -o hunyuan3d` writes (and `orfeas serve --models` serves both).
pub const DEFAULT_MODELS: [(&str, &str); 4] = [
    ("isnet-medium", "Background removal"),
    ("hunyuan3d/conditioner", "Shape model: image encoder"),
    ("hunyuan3d/denoiser", "Shape model: denoiser"),
    ("hunyuan3d/vae", "Shape model: shape decoder"),
];

pub const DEFAULT_BASE: &str = "models/";

fn with_slash(mut url: String) -> String {
    if !url.ends_with('/') {
        url.push('/');
    }
    url
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
            .map(|(id, label)| ConfigModel {
                id: id.to_string(),
                label: Some(label.to_string()),
                url: None,
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
            ModelSpec {
                label: model.label.unwrap_or_else(|| model.id.clone()),
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
    }

    #[test]
    fn query_parameters_override_the_file() {
        let file = ConfigFile {
            models_base: Some("https://cdn.example/m".into()),
            models: Some(vec![ConfigModel {
                id: "tiny".into(),
                label: None,
                url: None,
            }]),
        };
        let models = resolve(Some(&file), &[]);
        assert_eq!(models[0].url, "https://cdn.example/m/tiny/");
        assert_eq!(models[0].label, "tiny");
        let models = resolve(Some(&file), &params(&[("models", "/kiosk")]));
        assert_eq!(models[0].url, "/kiosk/tiny/");
        let models = resolve(Some(&file), &params(&[("model.tiny", "/x/y")]));
        assert_eq!(models[0].url, "/x/y/");
        assert!(resolve(Some(&file), &params(&[("models", "none")])).is_empty());
    }
}
