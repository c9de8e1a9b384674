//! The [`Backend`](super::Backend) ops' arguments checked by their shapes, for both backends.
//! The network checks its own shapes before it runs, so from it these never fail; they are for
//! programs calling the ops directly, who get an error naming the op and the shapes where the
//! CPU would panic (or silently compute from the wrong elements) and the GPU's kernels would
//! read or write outside their buffers.

use super::{Conv2dParams, FullGradBy, Pool2dParams};
use crate::{Error, Result};

fn bad<T>(op: &str, what: impl std::fmt::Display) -> Result<T> {
    Err(Error::Invalid(format!("{op}: {what}")))
}

/// `t`'s four dims; else an error calling it `name`. Only the first (the batch, or a
/// conv's output channels) may be 0 and only for a batch: an empty plane or channel list
/// is refused (the CPU's loops go a plane or a channel at a time).
pub(crate) fn dims4(op: &str, name: &str, t: &[usize]) -> Result<(usize, usize, usize, usize)> {
    match *t {
        [_, c, h, w] if [c, h, w].contains(&0) => bad(
            op,
            format_args!("{name} is {t:?}: its channels, height and width must be 1 or more"),
        ),
        [n, c, h, w] => Ok((n, c, h, w)),
        _ => bad(op, format_args!("{name} is {t:?}, not [N, C, H, W]")),
    }
}

/// An error naming `op` unless two tensors have one shape.
pub(crate) fn same_shape(op: &str, a: &[usize], b: &[usize]) -> Result<()> {
    match a == b {
        true => Ok(()),
        false => bad(
            op,
            format_args!("the tensors are {a:?} and {b:?}, not one shape"),
        ),
    }
}

/// Strides, dilations and groups of at least 1.
fn conv_geometry(op: &str, p: &Conv2dParams) -> Result<()> {
    let ones = [p.stride.0, p.stride.1, p.dilation.0, p.dilation.1, p.groups];
    match ones.contains(&0) {
        true => bad(
            op,
            format_args!("stride, dilation and groups must be 1 or more: {p:?}"),
        ),
        false => Ok(()),
    }
}

/// Filters [K, C/groups, R, S] for x's C channels, K divisible by the groups, a bias of K.
fn filters_fit(
    op: &str,
    c: usize,
    w: &[usize],
    b: Option<&[usize]>,
    p: &Conv2dParams,
) -> Result<()> {
    let (k, cg, _, _) = dims4(op, "the filters", w)?;
    if k == 0 {
        return bad(op, format_args!("the filters {w:?} have no output channel"));
    }
    conv_geometry(op, p)?;
    if cg.checked_mul(p.groups) != Some(c) || k % p.groups != 0 {
        return bad(
            op,
            format_args!(
                "filters {w:?} in {} group(s) do not take {c} input channels",
                p.groups
            ),
        );
    }
    match b {
        Some(b) if b != [k] => bad(op, format_args!("the bias is {b:?}, not [{k}]")),
        _ => Ok(()),
    }
}

/// Filters [K, C/groups, R, S] alone (to prepare them): four dims, K divisible by the groups.
pub(crate) fn filters(op: &str, w: &[usize], p: &Conv2dParams) -> Result<()> {
    let (_, cg, _, _) = dims4(op, "the filters", w)?;
    filters_fit(op, cg.saturating_mul(p.groups), w, None, p)
}

/// A batch: a tensor of at least one dim (the images).
pub(crate) fn batch(op: &str, t: &[usize]) -> Result<()> {
    match t.is_empty() {
        true => bad(op, "a tensor without dims has no batch"),
        false => Ok(()),
    }
}

/// `F.conv2d(x, w, b, ...)`'s arguments: x [N, C, H, W], w [K, C/groups, R, S], b [K], the
/// kernel fitting the padded input. The output's H×W.
pub(crate) fn conv(
    op: &str,
    x: &[usize],
    w: &[usize],
    b: Option<&[usize]>,
    p: &Conv2dParams,
) -> Result<(usize, usize)> {
    let (_, c, h, wd) = dims4(op, "x", x)?;
    filters_fit(op, c, w, b, p)?;
    let (r, s) = (w[2], w[3]);
    match p.out_hw((h, wd), (r, s)) {
        Some((oh, ow)) if oh > 0 && ow > 0 && r > 0 && s > 0 => Ok((oh, ow)),
        _ => bad(
            op,
            format_args!("a {r}×{s} kernel ({p:?}) leaves no output of a {h}×{wd} input"),
        ),
    }
}

/// `conv2d_input(in_hw, w, dy, ...)`'s arguments: dy [N, K, OH, OW] being what a conv by
/// w [K, C/groups, R, S] makes of an `in_hw` input.
pub(crate) fn conv_bwd_data(
    op: &str,
    dy: &[usize],
    w: &[usize],
    in_hw: (usize, usize),
    p: &Conv2dParams,
) -> Result<()> {
    let (n, k, oh, ow) = dims4(op, "dy", dy)?;
    let (_, cg, _, _) = dims4(op, "the filters", w)?;
    let x = [n, cg.saturating_mul(p.groups), in_hw.0, in_hw.1];
    if w[0] != k {
        return bad(
            op,
            format_args!("dy {dy:?} has {k} channels, the filters {w:?}"),
        );
    }
    match conv(op, &x, w, None, p)? == (oh, ow) {
        true => Ok(()),
        false => bad(
            op,
            format_args!("dy {dy:?} is not what this conv makes of a {in_hw:?} input"),
        ),
    }
}

/// `F.max_pool2d`'s arguments: x [N, C, H, W], a kernel, stride and dilation of at least 1,
/// padding at most half the kernel (PyTorch's rule; a window of padding alone would have no
/// maximum). The output's H×W.
pub(crate) fn pool(op: &str, x: &[usize], p: &Pool2dParams) -> Result<(usize, usize)> {
    let (_, _, h, w) = dims4(op, "x", x)?;
    let ones = [p.kernel, p.stride, p.dilation];
    if ones.iter().any(|&(a, b)| a == 0 || b == 0) {
        return bad(
            op,
            format_args!("kernel, stride and dilation must be 1 or more: {p:?}"),
        );
    }
    if p.padding.0 > p.kernel.0 / 2 || p.padding.1 > p.kernel.1 / 2 {
        return bad(op, format_args!("padding more than half the kernel: {p:?}"));
    }
    match p.out_hw((h, w)) {
        Some((oh, ow)) if oh > 0 && ow > 0 => Ok((oh, ow)),
        _ => bad(
            op,
            format_args!("the window ({p:?}) does not fit a {h}×{w} input"),
        ),
    }
}

/// The max pool's backward pass: dy shaped as the pool's output of x.
pub(crate) fn pool_bwd(op: &str, x: &[usize], dy: &[usize], p: &Pool2dParams) -> Result<()> {
    let (oh, ow) = pool(op, x, p)?;
    let want = [x[0], x[1], oh, ow];
    match dy == want {
        true => Ok(()),
        false => bad(op, format_args!("dy is {dy:?}, the pool's output {want:?}")),
    }
}

/// `F.adaptive_avg_pool2d(t, hw)` and its backward pass (t: x or dy): a 4-D tensor and
/// sizes of at least 1 on both sides.
pub(crate) fn adaptive_pool(op: &str, t: &[usize], hw: (usize, usize)) -> Result<()> {
    let (_, _, h, w) = dims4(op, "the tensor", t)?;
    match [h, w, hw.0, hw.1].contains(&0) {
        true => bad(
            op,
            format_args!("{h}×{w} to {}×{} (sizes must be 1 or more)", hw.0, hw.1),
        ),
        false => Ok(()),
    }
}

/// `F.linear(x, w, b)`'s arguments: x [N, in], w [out, in], b [out].
pub(crate) fn linear(op: &str, x: &[usize], w: &[usize], b: Option<&[usize]>) -> Result<()> {
    match (x, w, b) {
        ([_, i], [o, wi], b) if i == wi && *i > 0 && *o > 0 && b.is_none_or(|b| b == [*o]) => {
            Ok(())
        }
        _ => bad(
            op,
            format_args!(
                "x {x:?}, weights {w:?} and bias {b:?} are not [N, in], [out, in], [out] \
                 (in and out 1 or more)"
            ),
        ),
    }
}

/// `dy @ w`'s arguments: dy [N, out], w [out, in].
pub(crate) fn linear_bwd(op: &str, dy: &[usize], w: &[usize]) -> Result<()> {
    match (dy, w) {
        ([_, o], [wo, i]) if o == wo && *o > 0 && *i > 0 => Ok(()),
        _ => bad(
            op,
            format_args!("dy {dy:?} and weights {w:?} are not [N, out], [out, in]"),
        ),
    }
}

/// A per-channel affine map: x [N, C, H, W] and C factors and C offsets.
pub(crate) fn channel_affine(op: &str, x: &[usize], scale: usize, shift: usize) -> Result<()> {
    let (_, c, _, _) = dims4(op, "x", x)?;
    match scale == c && shift == c {
        true => Ok(()),
        false => bad(
            op,
            format_args!("{scale} factors and {shift} offsets for {c} channels"),
        ),
    }
}

/// Channel weights alpha [N, K] for activations a [N, K, h, w].
pub(crate) fn channel_weights(op: &str, a: &[usize], alpha: &[usize]) -> Result<()> {
    let (n, k, _, _) = dims4(op, "the activations", a)?;
    match alpha == [n, k] {
        true => Ok(()),
        false => bad(
            op,
            format_args!("the weights are {alpha:?}, not [{n}, {k}]"),
        ),
    }
}

/// Activations and their gradient: [N, K, h, w] both.
pub(crate) fn with_gradient(op: &str, a: &[usize], g: &[usize]) -> Result<()> {
    dims4(op, "the activations", a)?;
    same_shape(op, a, g)
}

/// Channels k0..k1 of a [N, K, h, w].
pub(crate) fn channel_range(op: &str, a: &[usize], (k0, k1): (usize, usize)) -> Result<()> {
    let (_, k, _, _) = dims4(op, "the activations", a)?;
    match k0 <= k1 && k1 <= k {
        true => Ok(()),
        false => bad(op, format_args!("channels {k0}..{k1} of {k}")),
    }
}

/// Score-CAM's inputs: x [N, C, H, W] and channels k0..k1 of a [N, K, h, w] (one N).
pub(crate) fn score_cam(op: &str, x: &[usize], a: &[usize], k: (usize, usize)) -> Result<()> {
    let (n, _, hh, ww) = dims4(op, "x", x)?;
    channel_range(op, a, k)?;
    // (Each channel is upsampled from a's h×w to x's: neither may be empty.)
    if [hh, ww, a[2], a[3]].contains(&0) {
        return bad(
            op,
            format_args!("x {x:?} and activations {a:?}: an empty map"),
        );
    }
    match a[0] == n {
        true => Ok(()),
        false => bad(
            op,
            format_args!("x {x:?} and activations {a:?}: not one batch"),
        ),
    }
}

/// A reshape keeps the element count.
pub(crate) fn reshape(from: &[usize], to: &[usize]) -> Result<()> {
    let size = |s: &[usize]| s.iter().try_fold(1usize, |n, &d| n.checked_mul(d));
    match size(from).is_some() && size(from) == size(to) {
        true => Ok(()),
        false => bad(
            "reshape",
            format_args!("{from:?} has another size than {to:?}"),
        ),
    }
}

/// Images of at least one pixel, by their (H, W).
pub(crate) fn images_nonempty(
    op: &str,
    mut dims: impl Iterator<Item = (usize, usize)>,
) -> Result<()> {
    match dims.position(|(h, w)| h == 0 || w == 0) {
        Some(i) => bad(op, format_args!("image {i} is empty")),
        None => Ok(()),
    }
}

/// A model input size of at least 1×1.
pub(crate) fn input_size(op: &str, (h, w): (usize, usize)) -> Result<()> {
    match h > 0 && w > 0 {
        true => Ok(()),
        false => bad(op, format_args!("a {h}×{w} input")),
    }
}

/// One map [N, h, w] for each of the `n` images.
pub(crate) fn maps_for(op: &str, n: usize, maps: &[usize]) -> Result<()> {
    match *maps {
        [m, h, w] if m == n && h > 0 && w > 0 => Ok(()),
        _ => bad(
            op,
            format_args!("maps {maps:?} for {n} images, not [{n}, h, w] with h, w ≥ 1"),
        ),
    }
}

/// [`Backend::full_grad_add`](super::Backend::full_grad_add)'s arguments, by their shapes:
/// `g` [N, K, h, w], x shaped like it or K bias values, a total [N, oh, ow].
pub(crate) fn full_grad(
    g: &[usize],
    by: FullGradBy<'_, [usize]>,
    total: Option<&[usize]>,
    (oh, ow): (usize, usize),
) -> Result<()> {
    let op = "full_grad_add";
    let (n, k, _, _) = dims4(op, "the gradient", g)?;
    match by {
        FullGradBy::Input(x) if x != g => {
            return bad(op, format_args!("x is {x:?}, the gradient {g:?}"))
        }
        FullGradBy::Bias(b) if b.len() != k => {
            return bad(op, format_args!("{} bias values for {k} channels", b.len()))
        }
        _ => {}
    }
    match total {
        Some(t) if t != [n, oh, ow] => bad(
            op,
            format_args!("the total is {t:?}, not [{n}, {oh}, {ow}]"),
        ),
        _ => Ok(()),
    }
}
