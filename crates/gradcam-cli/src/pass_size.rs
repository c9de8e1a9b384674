//! How many images of one input size go through the network at once on the CPU, where the
//! activations live in host memory. At 224×224 the default batch stands; at large sizes
//! (`--size native` on photographs, `--size 2048`) a batch is cut so that it fits the memory,
//! and an image whose single pass would not is refused instead of the process being killed.

use std::collections::HashMap;

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
    copies: Copies,
    host: bool,
    memory: Option<u64>,
    threads: usize,
    batch: usize,
    bytes: HashMap<(usize, usize), Option<u64>>,
}

impl<'a> PassSizes<'a> {
    /// `copies`: how many copies of one image's activations its method holds at once
    /// ([`method_copies`]).
    pub fn new(
        graph: &'a Graph,
        copies: Copies,
        host: bool,
        memory: Option<u64>,
        batch: usize,
    ) -> Self {
        let threads = rayon::current_num_threads();
        let bytes = HashMap::new();
        PassSizes {
            graph,
            copies,
            host,
            memory,
            threads,
            batch,
            bytes,
        }
    }

    /// The largest layer's bytes for one image at `hw`, its method's copies per image
    /// included; None off the host or where the graph cannot take the size (the pass then
    /// says why).
    fn per_image(&mut self, hw: (usize, usize)) -> Option<u64> {
        if !self.host {
            return None;
        }
        let (graph, copies) = (self.graph, self.copies.per_image.max(1));
        *self.bytes.entry(hw).or_insert_with(|| {
            let one = graph.largest_layer_bytes(hw).ok()?;
            Some(one.saturating_mul(copies))
        })
    }

    pub fn images_per_pass(&mut self, hw: (usize, usize)) -> usize {
        match self.per_image(hw) {
            Some(b) => images_per_pass(b, self.memory, self.threads, self.batch),
            None => self.batch,
        }
    }

    /// Why an image of input size `hw` cannot be explained here: one layer of its pass would
    /// take more than half the memory.
    pub fn too_large(&mut self, hw: (usize, usize)) -> Option<String> {
        let (one, memory) = (self.per_image(hw)?, self.memory?);
        let copies = self.copies.per_image.max(1) * self.copies.per_pass.max(1);
        let per = one.saturating_mul(self.copies.per_pass.max(1));
        (per > memory / 2).then(|| {
            let gb = |b: u64| b as f64 / 1e9;
            format!(
                "at {}×{} the network's largest layer alone takes {:.1} GB (its input and \
                 output{}), more than half of this machine's {:.1} GB: explain it at a smaller \
                 --size (224 by default){}",
                hw.1,
                hw.0,
                gb(per),
                match copies {
                    1 => String::new(),
                    c => format!(", for the {c} copies the method holds at once"),
                },
                gb(memory),
                match self.copies.per_pass {
                    0 | 1 => "",
                    _ => ", or with fewer copies (--score-batch)",
                }
            )
        })
    }
}

/// Copies of one image's activations a method holds at once: (per image of the pass, per
/// pass). Per image: aug_smooth's six transformed copies; guided backpropagation and FullGrad
/// keep a layer's worth more per block (counted twice). Per pass, whatever its images: the
/// masked images (Score-CAM, Ablation-CAM) or windows (SESS) run `--score-batch` at a time.
pub fn method_copies(score_batch: Option<usize>, aug_smooth: bool, keeps_layers: bool) -> Copies {
    let per_image = if aug_smooth { 6 } else { 1 } * if keeps_layers { 2 } else { 1 };
    let per_pass = score_batch.unwrap_or(1).max(1) as u64;
    Copies {
        per_image,
        per_pass,
    }
}

/// See [`method_copies`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Copies {
    pub per_image: u64,
    pub per_pass: u64,
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
        let mib = 1u64 << 20;
        let one = method_copies(None, false, false);
        let mut small = PassSizes::new(&graph, one, true, Some(512 * mib), 8);
        assert!(small.too_large((224, 224)).is_none());
        let why = small.too_large((4000, 4000)).unwrap();
        assert!(why.contains("4000×4000") && why.contains("0.5 GB"), "{why}");
        let mut large = PassSizes::new(&graph, one, true, Some(2048 * mib), 8);
        assert!(large.too_large((4000, 4000)).is_none());
        assert_eq!(large.images_per_pass((4000, 4000)), 1);
        assert_eq!(large.images_per_pass((224, 224)), 8);
        let mut gpu = PassSizes::new(&graph, one, false, Some(512 * mib), 8);
        assert!(gpu.too_large((4000, 4000)).is_none());
        assert_eq!(gpu.images_per_pass((4000, 4000)), 8);
        // Score-CAM's 32 masked copies of a 1200×1200 image: 32 × 46 MB, past 1 GiB.
        let copies = method_copies(Some(32), false, false);
        let mut score = PassSizes::new(&graph, copies, true, Some(2048 * mib), 8);
        let why = score.too_large((1200, 1200)).unwrap();
        assert!(
            why.contains("32 copies") && why.contains("--score-batch"),
            "{why}"
        );
        assert!(large.too_large((1200, 1200)).is_none());
        assert_eq!(score.images_per_pass((224, 224)), 8);
        let both = method_copies(None, true, true);
        assert_eq!((both.per_image, both.per_pass), (12, 1));
        // aug_smooth with guided backpropagation: 12 × 32 MB for a 1000×1000 image.
        let mut aug = PassSizes::new(&graph, both, true, Some(512 * mib), 8);
        let why = aug.too_large((1000, 1000)).unwrap();
        assert!(
            why.contains("12 copies") && !why.contains("--score-batch"),
            "{why}"
        );
        assert!(small.too_large((1000, 1000)).is_none());
        assert_eq!(method_copies(Some(0), false, false), one);
    }
}
