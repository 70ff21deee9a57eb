//! The model card written beside the weights: what the model is, what it was trained on and
//! how, and how well it did on validation — as JSON (for programs) and Markdown (for people).

use mtpath_shared::weights::TrunkInfo;
use serde::Serialize;

use super::config::TrainConfig;
use super::metrics::ValScores;

/// The commit mtpath was built from (`git describe` at build time; "unknown" outside a
/// checkout).
pub const COMMIT: &str = env!("MTPATH_COMMIT");

/// One task of the pool as trained.
#[derive(Debug, Clone, Serialize)]
pub struct CardTask {
    /// Task name (head `heads.<index>`).
    pub name: String,
    /// Head index.
    pub head: usize,
    /// Class names, in output order.
    pub classes: Vec<String>,
    /// Training / validation / test images.
    pub images: [usize; 3],
}

/// Everything the card says.
#[derive(Debug, Clone, Serialize)]
pub struct ModelCard {
    /// mtpath version.
    pub mtpath_version: String,
    /// Commit.
    pub commit: String,
    /// The trunk and its preprocessing (the record every model file and card embeds).
    #[serde(flatten)]
    pub trunk: TrunkInfo,
    /// Trunk initialisation (file or "random").
    pub init: String,
    /// The pool file.
    pub pool: String,
    /// Tasks.
    pub tasks: Vec<CardTask>,
    /// Training settings.
    pub training: TrainConfig,
    /// Iterations done when this card was written.
    pub iteration: usize,
    /// Validation scores at that iteration (empty if not validated yet).
    pub validation: Vec<ValScores>,
}

impl ModelCard {
    /// The card as pretty JSON.
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"))
    }

    /// The card as Markdown.
    pub fn to_markdown(&self) -> String {
        let mut s = format!(
            "# mtpath model: {} multi-task pre-trained trunk\n\n",
            self.trunk.architecture
        );
        s.push_str(&format!(
            "- Trunk: {} ({}-d features), torchvision state-dict names (`trunk.safetensors` \
             loads into `torchvision.models.{}` with `strict=False`).\n",
            self.trunk.architecture, self.trunk.feature_dim, self.trunk.architecture
        ));
        s.push_str(&format!(
            "- Input: {0}×{0} px RGB, normalised with mean {1:?} and std {2:?}.\n",
            self.trunk.input_size, self.trunk.mean, self.trunk.std
        ));
        s.push_str(&format!("- Initialisation: {}.\n", self.init));
        s.push_str(&format!(
            "- Trained {} iterations of batch {} on the pool `{}` (sampler `{}`, SGD lr {} \
             momentum {}, heads at lr × {}, weight decay {}, {} head warm-up iterations).\n",
            self.iteration,
            self.training.batch,
            self.pool,
            self.training.sampler,
            self.training.lr,
            self.training.momentum,
            self.training.head_lr_scale,
            self.training.weight_decay,
            self.training.head_warmup_iters
        ));
        s.push_str(&format!(
            "- mtpath {} (commit {}).\n\n## Tasks\n\n| head | task | classes | train | val | test |\n|---|---|---|---|---|---|\n",
            self.mtpath_version, self.commit
        ));
        for t in &self.tasks {
            s.push_str(&format!(
                "| {} | {} | {} | {} | {} | {} |\n",
                t.head,
                t.name,
                t.classes.join(", "),
                t.images[0],
                t.images[1],
                t.images[2]
            ));
        }
        if !self.validation.is_empty() {
            s.push_str("\n## Validation\n\n| task | images | accuracy | balanced accuracy |\n|---|---|---|---|\n");
            for v in &self.validation {
                s.push_str(&format!(
                    "| {} | {} | {:.3} | {:.3} |\n",
                    v.task, v.n, v.accuracy, v.balanced_accuracy
                ));
            }
        }
        s
    }
}
