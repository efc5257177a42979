//! Putting a loaded [`WeightSet`] into a burn module: every parameter is matched by its module
//! path; a missing, extra or wrong-shaped tensor is reported by name. Parameters are still
//! lazy when this runs, so the module's random initialisation never allocates.

use burn::module::{Module, ModuleMapper, ModuleVisitor, Param};
use burn::tensor::Tensor;
use thiserror::Error;

use super::upload::WeightSet;

#[derive(Debug, Clone, PartialEq, Eq, Default, Error)]
#[error("weights do not fit the model:{}", describe(self))]
pub struct ApplyError {
    /// Parameters of the module that the weights lack.
    pub missing: Vec<String>,
    /// Weights that no parameter of the module takes.
    pub unexpected: Vec<String>,
    /// `(name, weight shape, parameter shape)`.
    pub mismatched: Vec<(String, Vec<usize>, Vec<usize>)>,
}

fn describe(e: &ApplyError) -> String {
    const SHOWN: usize = 5;
    let list = |names: &[String]| {
        let mut s = names
            .iter()
            .take(SHOWN)
            .cloned()
            .collect::<Vec<_>>()
            .join(", ");
        if names.len() > SHOWN {
            s.push_str(&format!(" and {} more", names.len() - SHOWN));
        }
        s
    };
    let mut out = String::new();
    if !e.missing.is_empty() {
        out.push_str(&format!(" missing {};", list(&e.missing)));
    }
    if !e.unexpected.is_empty() {
        out.push_str(&format!(" unexpected {};", list(&e.unexpected)));
    }
    for (name, got, want) in e.mismatched.iter().take(SHOWN) {
        out.push_str(&format!(
            " {name} has shape {got:?}, the model expects {want:?};"
        ));
    }
    out.pop();
    out
}

/// Load `weights` into `module`, where a parameter's weight name is its module path
/// (`encoder.layers.0.fc1.weight`).
pub fn apply_weights<M: Module>(module: M, weights: WeightSet) -> Result<M, ApplyError> {
    apply_weights_renamed(module, weights, |path| path.to_string())
}

/// As [`apply_weights`], with `rename` mapping a module path to the weight's name.
pub fn apply_weights_renamed<M: Module>(
    module: M,
    weights: WeightSet,
    rename: impl Fn(&str) -> String,
) -> Result<M, ApplyError> {
    apply(module, weights, rename, false)
}

/// As [`apply_weights_renamed`] for PyTorch state dicts: a 2-D parameter named `weight` is a
/// linear layer's, stored `[out, in]` by PyTorch and `[in, out]` by burn, so it is transposed;
/// burn's norm parameters `gamma`/`beta` are PyTorch's `weight`/`bias` (renamed before `rename`
/// sees the path).
pub fn apply_torch_weights<M: Module>(
    module: M,
    weights: WeightSet,
    rename: impl Fn(&str) -> String,
) -> Result<M, ApplyError> {
    apply(module, weights, rename, true)
}

fn apply<M: Module>(
    module: M,
    weights: WeightSet,
    rename: impl Fn(&str) -> String,
    torch_linear: bool,
) -> Result<M, ApplyError> {
    let mut mapper = WeightMapper {
        weights,
        rename,
        path: Vec::new(),
        error: ApplyError::default(),
        torch_linear,
    };
    let module = module.map(&mut mapper);
    let mut error = mapper.error;
    error.unexpected = mapper.weights.names().map(str::to_string).collect();
    if error.missing.is_empty() && error.unexpected.is_empty() && error.mismatched.is_empty() {
        Ok(module)
    } else {
        Err(error)
    }
}

struct WeightMapper<R> {
    weights: WeightSet,
    rename: R,
    path: Vec<String>,
    error: ApplyError,
    torch_linear: bool,
}

impl<R: Fn(&str) -> String> ModuleMapper for WeightMapper<R> {
    fn enter_module(&mut self, name: &str, _container_type: &str) {
        self.path.push(name.to_string());
    }

    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.path.pop();
    }

    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        let want = param.lazy_shape().to_vec();
        let (name, expected, linear) =
            checkpoint_entry(&self.path, &want, self.torch_linear, &self.rename);
        let Some(stored) = self.weights.take(&name) else {
            self.error.missing.push(name);
            return param;
        };
        if stored.shape != expected {
            self.error.mismatched.push((name, stored.shape, expected));
            return param;
        }
        let mut tensor = stored.reshaped::<D>().expect("rank equals the parameter's");
        if linear && !stored.transposed {
            tensor = tensor.transpose();
        }
        let id = param.id;
        param.transform_for_load(tensor, id)
    }
}

/// A parameter's checkpoint name and stored shape, from its module path and shape: with
/// `torch` naming, burn's norm `gamma`/`beta` are PyTorch's `weight`/`bias` and a 2-D `weight`
/// is a linear layer's, stored `[out, in]` (the third value says it must be transposed).
pub(crate) fn checkpoint_entry(
    path: &[String],
    shape: &[usize],
    torch: bool,
    rename: impl Fn(&str) -> String,
) -> (String, Vec<usize>, bool) {
    let mut path = path.to_vec();
    if torch && let Some(last) = path.last_mut() {
        match last.as_str() {
            "gamma" => *last = "weight".into(),
            "beta" => *last = "bias".into(),
            _ => {}
        }
    }
    let linear = torch && shape.len() == 2 && path.last().is_some_and(|p| p == "weight");
    let stored = if linear {
        vec![shape[1], shape[0]]
    } else {
        shape.to_vec()
    };
    (rename(&path.join(".")), stored, linear)
}

/// Every parameter of `module` as the PyTorch checkpoint that [`apply_torch_weights`] takes
/// would store it: `(name, shape)` in module order. Parameters are not materialised (a
/// full-size model's layout costs nothing).
pub fn torch_layout<M: Module>(
    module: &M,
    rename: impl Fn(&str) -> String,
) -> Vec<(String, Vec<usize>)> {
    struct Layout<R> {
        rename: R,
        path: Vec<String>,
        out: Vec<(String, Vec<usize>)>,
    }
    impl<R: Fn(&str) -> String> ModuleVisitor for Layout<R> {
        fn enter_module(&mut self, name: &str, _container_type: &str) {
            self.path.push(name.to_string());
        }
        fn exit_module(&mut self, _name: &str, _container_type: &str) {
            self.path.pop();
        }
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            let (name, shape, _) =
                checkpoint_entry(&self.path, &param.lazy_shape(), true, &self.rename);
            self.out.push((name, shape));
        }
    }
    let mut layout = Layout {
        rename,
        path: Vec::new(),
        out: Vec::new(),
    };
    module.visit(&mut layout);
    layout.out
}
