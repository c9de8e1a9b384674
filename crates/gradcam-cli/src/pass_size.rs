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
    host: bool,
    memory: Option<u64>,
    threads: usize,
    batch: usize,
    bytes: HashMap<(usize, usize), Option<u64>>,
}

impl<'a> PassSizes<'a> {
    pub fn new(graph: &'a Graph, host: bool, memory: Option<u64>, batch: usize) -> Self {
        let threads = rayon::current_num_threads();
        let bytes = HashMap::new();
        PassSizes {
            graph,
            host,
            memory,
            threads,
            batch,
            bytes,
        }
    }

    /// The largest layer's bytes for one image at `hw`; None off the host or where the graph
    /// cannot take the size (the pass then says why).
    fn per_image(&mut self, hw: (usize, usize)) -> Option<u64> {
        if !self.host {
            return None;
        }
        let graph = self.graph;
        *self
            .bytes
            .entry(hw)
            .or_insert_with(|| graph.largest_layer_bytes(hw).ok())
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
        let (per, memory) = (self.per_image(hw)?, self.memory?);
        (per > memory / 2).then(|| {
            let gb = |b: u64| b as f64 / 1e9;
            format!(
                "at {}×{} the network's largest layer alone takes {:.1} GB (its input and \
                 output), more than half of this machine's {:.1} GB: explain it at a fixed \
                 size (--size 224, or a larger S)",
                hw.1,
                hw.0,
                gb(per),
                gb(memory)
            )
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
    /// nothing is cut or refused.
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
        let mut small = PassSizes::new(&graph, true, Some(512 * mib), 8);
        assert!(small.too_large((224, 224)).is_none());
        let why = small.too_large((4000, 4000)).unwrap();
        assert!(why.contains("4000×4000") && why.contains("0.5 GB"), "{why}");
        let mut large = PassSizes::new(&graph, true, Some(2048 * mib), 8);
        assert!(large.too_large((4000, 4000)).is_none());
        assert_eq!(large.images_per_pass((4000, 4000)), 1);
        assert_eq!(large.images_per_pass((224, 224)), 8);
        let mut gpu = PassSizes::new(&graph, false, Some(512 * mib), 8);
        assert!(gpu.too_large((4000, 4000)).is_none());
        assert_eq!(gpu.images_per_pass((4000, 4000)), 8);
    }
}
