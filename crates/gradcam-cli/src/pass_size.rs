//! How many images of one input size go through the network at once on the CPU, where the
//! activations live in host memory. At 224×224 the default batch stands; at large sizes
//! (`--size native` on photographs, `--size 2048`) a batch is cut so that it fits the memory,
//! and an image whose single pass would not is refused instead of the process being killed.

use std::collections::HashMap;

use gradcam::cam::sess::windows_per_pass;
use gradcam::cam::{Method, Target};
use gradcam::image::InputSize;
use gradcam::model::Graph;

/// The bytes of a pass's largest layer (inputs and output, all its images) worth aiming
/// for: past it, passes are no faster per image (VGG16 on 2000×1500 photographs, 2 threads:
/// 20.5 s for 8 images two at a time, 28 s four at a time, 34.5 s all 8 at once).
const PASS_BYTES: u64 = 1 << 30;

/// Images per pass for an image whose largest layer takes `per_image` bytes: as many as
/// fit [`PASS_BYTES`] or one per thread, whichever is more, but no more than a quarter of
/// `memory` holds; at least one, at most `batch`.
pub fn images_per_pass(per_image: u64, memory: Option<u64>, threads: usize, batch: usize) -> usize {
    let per = per_image.max(1);
    let by_speed = usize::try_from(PASS_BYTES / per).unwrap_or(usize::MAX);
    let fit = memory.map_or(usize::MAX, |m| {
        usize::try_from(m / 4 / per).unwrap_or(usize::MAX)
    });
    by_speed.max(threads).min(fit).clamp(1, batch.max(1))
}

/// Per input size: the largest layer's bytes (cached), the images per pass, and whether one
/// image is too large for this machine. Only for backends whose activations are in host
/// memory; elsewhere every size passes a whole batch.
pub struct PassSizes<'a> {
    graph: &'a Graph,
    method: MethodMemory,
    host: bool,
    memory: Option<u64>,
    threads: usize,
    batch: usize,
    bytes: HashMap<(usize, usize), Option<Cost>>,
    /// The fewest a pass held where more were waiting, and at which size: for [`Self::cut_note`].
    cut: Option<(usize, (usize, usize))>,
}

/// What one image of an input size costs: `per_image` bytes in each pass it shares with
/// others (its method's copies included), `alone` at its peak (the larger of that and the
/// copies the method runs for it by itself), and how many copies that peak holds.
#[derive(Clone, Copy, Debug)]
struct Cost {
    per_image: u64,
    alone: u64,
    copies: u64,
}

impl<'a> PassSizes<'a> {
    pub fn new(
        graph: &'a Graph,
        method: MethodMemory,
        host: bool,
        memory: Option<u64>,
        batch: usize,
    ) -> Self {
        let threads = rayon::current_num_threads();
        let bytes = HashMap::new();
        PassSizes {
            graph,
            method,
            host,
            memory,
            threads,
            batch,
            bytes,
            cut: None,
        }
    }

    /// For commands that run forward passes to `layer` (`dff`, `eval`'s measures), `batch`
    /// images at most: Grad-CAM's memory at the layer, an upper bound. At a fixed --size
    /// every image is resized to it, so one too large for a pass fails the command here.
    pub fn forward_to(
        graph: &'a Graph,
        layer: &str,
        host: bool,
        size: InputSize,
        batch: usize,
    ) -> anyhow::Result<Self> {
        let (method, target) = (Method::GradCam, Target::Logit);
        let method = MethodMemory::of(graph, method, target, &[layer], 1, false, false, false)?;
        let mut passes = PassSizes::new(graph, method, host, crate::memory::bytes(), batch);
        if let InputSize::Square(s) = size {
            if let Some(why) = passes.too_large((s, s)) {
                anyhow::bail!("--size {s}: {why}");
            }
        }
        Ok(passes)
    }

    /// None off the host or where the graph cannot take the size (the pass then says why).
    fn cost(&mut self, hw: (usize, usize)) -> Option<Cost> {
        if !self.host {
            return None;
        }
        let (graph, method) = (self.graph, &self.method);
        *self
            .bytes
            .entry(hw)
            .or_insert_with(|| method.cost(graph, hw).ok())
    }

    pub fn images_per_pass(&mut self, hw: (usize, usize)) -> usize {
        match self.cost(hw) {
            Some(c) => images_per_pass(c.per_image, self.memory, self.threads, self.batch),
            None => self.batch,
        }
    }

    /// The memory these passes are planned for (None: unknown).
    pub fn memory(&self) -> Option<u64> {
        self.memory
    }

    /// [`Self::images_per_pass`] for `waiting` inputs of size `hw`, remembering where that
    /// cuts them to fewer than the batch, for [`Self::cut_note`].
    pub fn pass_of(&mut self, hw: (usize, usize), waiting: usize) -> usize {
        let n = self.images_per_pass(hw);
        // (A group larger than the batch is cut by it, as asked: no note.)
        if waiting > n && n < self.batch && self.cut.is_none_or(|(fewest, _)| n < fewest) {
            self.cut = Some((n, hw));
        }
        n
    }

    /// A line for the end of a run whose passes were cut to fit the memory (a run slower per
    /// image than its batch size promises): `what` went through fewer at a time than `option`.
    pub fn cut_note(&self, what: &str, option: &str) -> Option<String> {
        let (n, (h, w)) = self.cut?;
        Some(format!(
            "{what} went through fewer at a time than {option} {} to fit in {} {} of memory \
             (as few as {n} a pass, at {w}×{h})",
            self.batch,
            crate::memory::whose(),
            crate::memory::amount(self.memory.unwrap_or(0)),
        ))
    }

    /// Why an image of input size `hw` cannot be explained here: one layer of its pass would
    /// take more than half the memory.
    pub fn too_large(&mut self, hw: (usize, usize)) -> Option<String> {
        let (cost, memory) = (self.cost(hw)?, self.memory?);
        (cost.alone > memory / 2).then(|| {
            let amount = crate::memory::amount;
            let copies = match cost.copies {
                0 | 1 => String::new(),
                c => format!(", for the {c} copies the method holds at once"),
            };
            let fewer = match (self.method.score_batch_option, self.method.runs_copies()) {
                (true, true) => ", or with fewer copies at once (--score-batch)",
                _ => "",
            };
            format!(
                "at {}×{} the network's largest layer alone takes {} (its input and \
                 output{copies}), more than half of {} {} of memory: explain it at a \
                 smaller --size{fewer}",
                hw.1,
                hw.0,
                amount(cost.alone),
                crate::memory::whose(),
                amount(memory),
            )
        })
    }
}

/// How a method holds an image's activations, for [`PassSizes`]: `per_image` copies in each
/// pass (aug_smooth's six transformed copies; guided backpropagation and FullGrad keep a
/// layer's worth more per block, counted twice), and the passes it runs for one image by
/// itself: Score-CAM's masked images and Ablation-CAM's ablated copies (run on from the
/// target layer; none where the logits are affine in it), at most `--score-batch` at a time,
/// and SESS's windows (`gradcam::cam::sess::windows_per_pass`, each explained by the method).
#[derive(Clone, Debug)]
pub struct MethodMemory {
    pub per_image: u64,
    pub copies: Copies,
    /// SESS's `--score-batch`: windows of the input explained a pass at a time.
    pub windows: Option<usize>,
    /// Whether the command has `--score-batch`, to name it in a refusal.
    pub score_batch_option: bool,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Copies {
    None,
    /// `batch` masked inputs at a time, one per channel of the target layer (`channels`).
    Masked {
        batch: usize,
        channels: usize,
    },
    /// `batch` ablated copies of the target layer at a time, run on from its node `from`.
    Ablated {
        batch: usize,
        channels: usize,
        from: usize,
    },
}

impl MethodMemory {
    /// `explain`'s and `bench`'s settings: the method at its target layers (those given, FullGrad's
    /// ignored), its `score_batch`, SESS, aug_smooth, and whether layers are kept (guided
    /// backpropagation, FullGrad).
    #[allow(clippy::too_many_arguments)]
    pub fn of(
        graph: &Graph,
        method: Method,
        target: Target,
        layers: &[&str],
        score_batch: usize,
        sess: bool,
        aug_smooth: bool,
        keeps_layers: bool,
    ) -> gradcam::Result<Self> {
        let batch = score_batch.max(1);
        let (channels, from, affine) =
            (layers.iter()).try_fold((0, usize::MAX, true), |acc, l| {
                let node = graph.layer(l)?.node;
                let c = graph
                    .shapes(&[1, graph.in_channels, 224, 224])
                    .map_or(0, |s| s[node].get(1).copied().unwrap_or(0));
                Ok::<_, gradcam::Error>((
                    acc.0.max(c),
                    acc.1.min(node + 1),
                    acc.2 && graph.affine_after(l)?,
                ))
            })?;
        let copies = match method {
            Method::ScoreCam => Copies::Masked { batch, channels },
            Method::AblationCam if !(affine && target == Target::Logit) => Copies::Ablated {
                batch,
                channels,
                from,
            },
            _ => Copies::None,
        };
        Ok(MethodMemory {
            per_image: if aug_smooth { 6 } else { 1 } * if keeps_layers { 2 } else { 1 },
            copies,
            windows: sess.then_some(batch),
            score_batch_option: true,
        })
    }

    fn runs_copies(&self) -> bool {
        self.copies != Copies::None || self.windows.is_some()
    }

    fn cost(&self, graph: &Graph, (h, w): (usize, usize)) -> gradcam::Result<Cost> {
        let one = graph.largest_layer_bytes((h, w))?;
        let per_image = one.saturating_mul(self.per_image);
        // (bytes, copies) of the passes run for one input of size hw by itself.
        let passes = |hw: (usize, usize)| -> gradcam::Result<(u64, u64)> {
            let (n, bytes) = match self.copies {
                Copies::None => return Ok((0, 0)),
                Copies::Masked { batch, channels } => {
                    (batch.min(channels.max(1)), graph.largest_layer_bytes(hw)?)
                }
                Copies::Ablated {
                    batch,
                    channels,
                    from,
                } => (
                    batch.min(channels.max(1)),
                    graph.largest_layer_bytes_from(hw, from)?,
                ),
            };
            Ok((bytes.saturating_mul(n as u64), n as u64))
        };
        let (extra, copies) = match self.windows {
            Some(score_batch) => {
                let win = h.min(w);
                let n = windows_per_pass(score_batch, graph.in_channels, (h, w)) as u64;
                let windows = (graph.largest_layer_bytes((win, win))?.saturating_mul(n), n);
                windows.max(passes((win, win))?)
            }
            None => passes((h, w))?,
        };
        let (alone, copies) = (per_image, self.per_image).max((extra, copies));
        Ok(Cost {
            per_image,
            alone,
            copies,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// ResNet-50 / VGG16 at 224 keep their batches; VGG16 on 3-megapixel photographs (1.5 GB
    /// a layer) runs one per thread; past a quarter of the memory fewer; never none.
    #[test]
    fn passes_fit_the_memory() {
        let gib = 1u64 << 30;
        let mem = Some(24 * gib);
        assert_eq!(images_per_pass(6_400_000, mem, 2, 8), 8);
        assert_eq!(images_per_pass(25_700_000, mem, 2, 32), 32);
        assert_eq!(images_per_pass(1_540_000_000, mem, 2, 32), 2);
        assert_eq!(images_per_pass(400_000_000, mem, 2, 8), 2);
        assert_eq!(images_per_pass(1_540_000_000, mem, 16, 32), 4);
        assert_eq!(images_per_pass(7 * gib, mem, 16, 32), 1);
        assert_eq!(images_per_pass(7 * gib, None, 4, 32), 4);
        assert_eq!(images_per_pass(0, mem, 2, 0), 1);
    }

    /// VGG11 at a sixteenth of its width: its largest layer is the ReLU after the first conv
    /// (4 channels in and out at the input's size; counted as if not in place); a 4000×4000
    /// image's (512 MB) is refused with 512 MiB of memory, not with 2 GiB; off the host
    /// nothing is cut or refused; a method's copies count.
    #[test]
    fn sizes_follow_the_largest_layer() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("vgg.safetensors");
        let dict = gradcam::model::synth::state_dict("vgg11", 16, 10, 3).unwrap();
        gradcam::model::synth::write(&path, &dict, safetensors::Dtype::F32).unwrap();
        let graph = gradcam::model::load(&path, None).unwrap();
        assert_eq!(
            graph.largest_layer_bytes((100, 100)).unwrap(),
            (4 + 4) * 100 * 100 * 4
        );
        let layer = [graph.default_layer.as_str()];
        let memory = |method, score_batch, sess, aug, keeps| {
            MethodMemory::of(
                &graph,
                method,
                Target::Logit,
                &layer,
                score_batch,
                sess,
                aug,
                keeps,
            )
            .unwrap()
        };
        let mib = 1u64 << 20;
        let one = memory(Method::GradCam, 32, false, false, false);
        let mut small = PassSizes::new(&graph, one.clone(), true, Some(512 * mib), 8);
        assert!(small.too_large((224, 224)).is_none());
        let why = small.too_large((4000, 4000)).unwrap();
        assert!(
            why.contains("4000×4000") && why.contains("488 MiB"),
            "{why}"
        );
        assert!(!why.contains("copies"), "{why}");
        let mut large = PassSizes::new(&graph, one.clone(), true, Some(2048 * mib), 8);
        assert!(large.too_large((4000, 4000)).is_none());
        assert_eq!(large.images_per_pass((4000, 4000)), 1);
        assert_eq!(large.images_per_pass((224, 224)), 8);
        // A note only where a pass was cut: one 4000×4000 image alone is not.
        assert_eq!(large.pass_of((4000, 4000), 1), 1);
        assert_eq!(large.pass_of((224, 224), 20), 8);
        assert!(large.cut_note("images", "--batch").is_none());
        assert_eq!(large.pass_of((4000, 4000), 3), 1);
        let note = large.cut_note("images", "--batch").unwrap();
        assert!(
            note.contains("than --batch 8") && note.contains("as few as 1 a pass, at 4000×4000"),
            "{note}"
        );
        let mut gpu = PassSizes::new(&graph, one, false, Some(512 * mib), 8);
        assert!(gpu.too_large((4000, 4000)).is_none());
        assert_eq!(gpu.images_per_pass((4000, 4000)), 8);

        // Score-CAM masks the input once per channel of features.18 (32 here), 32 at a time:
        // at 1200×1200, 32 × 46 MB, past 1 GiB; 8 at a time fit.
        let score = memory(Method::ScoreCam, 32, false, false, false);
        assert_eq!(
            score.copies,
            Copies::Masked {
                batch: 32,
                channels: 32
            }
        );
        let mut score = PassSizes::new(&graph, score, true, Some(2048 * mib), 8);
        let why = score.too_large((1200, 1200)).unwrap();
        assert!(
            why.contains("32 copies") && why.contains("--score-batch"),
            "{why}"
        );
        assert!(large.too_large((1200, 1200)).is_none());
        assert_eq!(score.images_per_pass((224, 224)), 8);
        let eight = memory(Method::ScoreCam, 8, false, false, false);
        let mut eight = PassSizes::new(&graph, eight, true, Some(2048 * mib), 8);
        assert!(eight.too_large((1200, 1200)).is_none());
        // Ablation-CAM runs its copies on from the layer (after VGG's last ReLU: a pooling
        // and the classifier), far smaller than the first layers.
        let ablation = memory(Method::AblationCam, 32, false, false, false);
        assert!(matches!(
            ablation.copies,
            Copies::Ablated {
                batch: 32,
                channels: 32,
                ..
            }
        ));
        let mut ablation = PassSizes::new(&graph, ablation, true, Some(2048 * mib), 8);
        assert!(ablation.too_large((1200, 1200)).is_none());

        // aug_smooth with guided backpropagation: 12 × 32 MB for a 1000×1000 image; no
        // --score-batch to lower.
        let both = memory(Method::GradCam, 32, false, true, true);
        assert_eq!((both.per_image, &both.copies), (12, &Copies::None));
        let mut aug = PassSizes::new(&graph, both, true, Some(512 * mib), 8);
        let why = aug.too_large((1000, 1000)).unwrap();
        assert!(
            why.contains("12 copies") && !why.contains("--score-batch"),
            "{why}"
        );
        assert!(small.too_large((1000, 1000)).is_none());
        // SESS: 2^25 / (3 · 1000²) = 11 windows of 1000×1000 a pass, 11 × 32 MB.
        let sess = memory(Method::GradCam, 32, true, false, false);
        let mut sess = PassSizes::new(&graph, sess, true, Some(512 * mib), 8);
        let why = sess.too_large((1000, 1000)).unwrap();
        assert!(
            why.contains("11 copies") && why.contains("--score-batch"),
            "{why}"
        );
        assert!(sess.too_large((400, 400)).is_none());
    }
}
