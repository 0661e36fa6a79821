//! Adam written on plain tensors, so its moments can be saved and a resumed run continues
//! bit-for-bit (tch's optimiser keeps its state inside libtorch, out of reach).

use std::path::Path;

use anyhow::{Context, Result, ensure};
use tch::Tensor;

pub struct Adam {
    names: Vec<String>,
    params: Vec<Tensor>,
    m: Vec<Tensor>,
    v: Vec<Tensor>,
    t: i64,
    /// Updates skipped for a non-finite gradient.
    pub skipped: u64,
    pub lr: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
}

impl Adam {
    /// An optimiser over named parameters. The moments are saved under the parameters' names
    /// (variable stores hand out their variables in no fixed order).
    pub fn new(mut named: Vec<(String, Tensor)>, lr: f64) -> Adam {
        named.sort_by(|a, b| a.0.cmp(&b.0));
        let (names, params): (Vec<String>, Vec<Tensor>) = named.into_iter().unzip();
        let m = params.iter().map(Tensor::zeros_like).collect();
        let v = params.iter().map(Tensor::zeros_like).collect();
        Adam { names, params, m, v, t: 0, skipped: 0, lr, beta1: 0.9, beta2: 0.999, eps: 1e-8 }
    }

    pub fn params(&self) -> &[Tensor] {
        &self.params
    }

    /// Back-propagates `loss` and updates every parameter (gradients are cleared first).
    pub fn step(&mut self, loss: &Tensor) -> Result<()> {
        for p in &mut self.params {
            p.zero_grad();
        }
        loss.f_backward()?;
        let grads: Vec<Tensor> = self.params.iter().map(Tensor::grad).collect();
        self.apply(&grads)
    }

    /// The gradients of `loss` with respect to this optimiser's parameters only (other
    /// parameters in the graph get none); the graph is kept for a second call.
    pub fn grads(&self, loss: &Tensor) -> Result<Vec<Tensor>> {
        Ok(Tensor::f_run_backward(&[loss], &self.params, true, false)?)
    }

    /// One Adam update with the given gradients (one per parameter, in order).
    pub fn apply(&mut self, grads: &[Tensor]) -> Result<()> {
        ensure!(grads.len() == self.params.len(), "{} gradients for {} parameters", grads.len(), self.params.len());
        // One overflowing gradient (e.g. the detector's RMS normalisation on a nearly silent
        // separated stem) would turn every weight into NaN through the moments: skip the update.
        let finite = grads
            .iter()
            .filter(|g| g.defined())
            .all(|g| g.isfinite().all().int64_value(&[]) == 1);
        if !finite {
            self.skipped += 1;
            tracing::warn!("non-finite gradient: update skipped ({} so far)", self.skipped);
            return Ok(());
        }
        self.t += 1;
        let (b1, b2) = (self.beta1, self.beta2);
        let bc1 = 1.0 - b1.powi(self.t as i32);
        let bc2 = 1.0 - b2.powi(self.t as i32);
        tch::no_grad(|| {
            for (((p, m), v), g) in self.params.iter_mut().zip(&mut self.m).zip(&mut self.v).zip(grads) {
                if !g.defined() {
                    continue;
                }
                let _ = m.g_mul_scalar_(b1).g_add_(&(g * (1.0 - b1)));
                let _ = v.g_mul_scalar_(b2).g_add_(&(g * g * (1.0 - b2)));
                let update = (&*m / bc1) / ((&*v / bc2).sqrt() + self.eps) * self.lr;
                let _ = p.g_sub_(&update);
            }
        });
        Ok(())
    }

    /// Saves the moments and the step count.
    pub fn save(&self, path: &Path) -> Result<()> {
        let mut named: Vec<(String, Tensor)> = Vec::new();
        for ((name, m), v) in self.names.iter().zip(&self.m).zip(&self.v) {
            named.push((format!("m.{name}"), m.to_device(tch::Device::Cpu)));
            named.push((format!("v.{name}"), v.to_device(tch::Device::Cpu)));
        }
        named.push(("t".into(), Tensor::from_slice(&[self.t])));
        Tensor::write_safetensors(&named, path).with_context(|| format!("cannot write {}", path.display()))?;
        Ok(())
    }

    pub fn load(&mut self, path: &Path) -> Result<()> {
        let map: std::collections::HashMap<String, Tensor> =
            Tensor::read_safetensors(path).with_context(|| format!("cannot read {}", path.display()))?.into_iter().collect();
        ensure!(map.len() == 2 * self.m.len() + 1, "{}: optimiser state for a different set of parameters", path.display());
        for ((name, m), v) in self.names.iter().zip(&mut self.m).zip(&mut self.v) {
            let (Some(sm), Some(sv)) = (map.get(&format!("m.{name}")), map.get(&format!("v.{name}"))) else {
                anyhow::bail!("{}: no moments for `{name}`", path.display());
            };
            ensure!(sm.size() == m.size(), "{}: moments of `{name}` have the wrong shape", path.display());
            tch::no_grad(|| {
                m.copy_(sm);
                v.copy_(sv);
            });
        }
        self.t = map["t"].int64_value(&[]);
        Ok(())
    }
}
