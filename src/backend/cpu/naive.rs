//! The oracle: each op written the obvious way, one output element at a time, straight from
//! its PyTorch definition. Slow on purpose; the fast ops and the CUDA kernels are tested
//! against these.

use crate::backend::{relu, Conv2dParams, Pool2dParams};
use crate::Tensor;

/// Input coordinate for output index `o`, kernel tap `k`; None when it falls in the padding.
fn tap(o: usize, k: usize, stride: usize, pad: usize, dil: usize, len: usize) -> Option<usize> {
    let i = (o * stride + k * dil) as isize - pad as isize;
    (i >= 0 && (i as usize) < len).then_some(i as usize)
}

pub fn conv2d_fwd(x: &Tensor, w: &Tensor, b: Option<&Tensor>, p: &Conv2dParams) -> Tensor {
    let (n, c, h, wd) = x.dims4();
    let (k, cg, r, s) = w.dims4();
    let (oh, ow) = p.out_hw((h, wd), (r, s)).expect("kernel larger than input");
    let kg = k / p.groups;
    let mut y = Tensor::zeros([n, k, oh, ow]);
    let (xd, wdt) = (x.data(), w.data());
    let yd = y.data_mut();
    for ni in 0..n {
        for ki in 0..k {
            let g = ki / kg;
            for oy in 0..oh {
                for ox in 0..ow {
                    let mut acc = b.map_or(0.0, |b| b.data()[ki]) as f64;
                    for ci in 0..cg {
                        let cin = g * cg + ci;
                        for ry in 0..r {
                            let Some(iy) = tap(oy, ry, p.stride.0, p.padding.0, p.dilation.0, h)
                            else {
                                continue;
                            };
                            for sx in 0..s {
                                let Some(ix) =
                                    tap(ox, sx, p.stride.1, p.padding.1, p.dilation.1, wd)
                                else {
                                    continue;
                                };
                                acc += xd[((ni * c + cin) * h + iy) * wd + ix] as f64
                                    * wdt[((ki * cg + ci) * r + ry) * s + sx] as f64;
                            }
                        }
                    }
                    yd[((ni * k + ki) * oh + oy) * ow + ox] = acc as f32;
                }
            }
        }
    }
    let _ = c;
    y
}

/// The adjoint of [`conv2d_fwd`]: every output gradient is scattered back through each tap.
pub fn conv2d_bwd_data(dy: &Tensor, w: &Tensor, in_hw: (usize, usize), p: &Conv2dParams) -> Tensor {
    let (n, k, oh, ow) = dy.dims4();
    let (_, cg, r, s) = w.dims4();
    let (h, wd) = in_hw;
    let c = cg * p.groups;
    let kg = k / p.groups;
    let mut acc = vec![0f64; n * c * h * wd];
    let (dyd, wdt) = (dy.data(), w.data());
    for ni in 0..n {
        for ki in 0..k {
            let g = ki / kg;
            for oy in 0..oh {
                for ox in 0..ow {
                    let gv = dyd[((ni * k + ki) * oh + oy) * ow + ox] as f64;
                    for ci in 0..cg {
                        let cin = g * cg + ci;
                        for ry in 0..r {
                            let Some(iy) = tap(oy, ry, p.stride.0, p.padding.0, p.dilation.0, h)
                            else {
                                continue;
                            };
                            for sx in 0..s {
                                let Some(ix) =
                                    tap(ox, sx, p.stride.1, p.padding.1, p.dilation.1, wd)
                                else {
                                    continue;
                                };
                                acc[((ni * c + cin) * h + iy) * wd + ix] +=
                                    gv * wdt[((ki * cg + ci) * r + ry) * s + sx] as f64;
                            }
                        }
                    }
                }
            }
        }
    }
    Tensor::new([n, c, h, wd], acc.into_iter().map(|v| v as f32).collect())
}

pub fn relu_fwd(x: &Tensor) -> Tensor {
    let data = x.data().iter().map(|&v| relu(v)).collect();
    Tensor::new(x.shape(), data)
}

pub fn relu_bwd(y: &Tensor, dy: &Tensor, guided: bool) -> Tensor {
    let data = y
        .data()
        .iter()
        .zip(dy.data())
        .map(|(&y, &g)| {
            if y > 0.0 && (!guided || g > 0.0) {
                g
            } else {
                0.0
            }
        })
        .collect();
    Tensor::new(dy.shape(), data)
}

/// Index (within the plane) of the first maximum of output cell (oy, ox): scanning the window
/// row by row, a later element wins only when strictly greater, as in PyTorch.
fn window_argmax(
    plane: &[f32],
    h: usize,
    w: usize,
    oy: usize,
    ox: usize,
    p: &Pool2dParams,
) -> usize {
    let mut best = f32::NEG_INFINITY;
    let mut arg = usize::MAX;
    for ky in 0..p.kernel.0 {
        let Some(iy) = tap(oy, ky, p.stride.0, p.padding.0, p.dilation.0, h) else {
            continue;
        };
        for kx in 0..p.kernel.1 {
            let Some(ix) = tap(ox, kx, p.stride.1, p.padding.1, p.dilation.1, w) else {
                continue;
            };
            let v = plane[iy * w + ix];
            if v > best || v.is_nan() || arg == usize::MAX {
                best = v;
                arg = iy * w + ix;
                if v.is_nan() {
                    return arg;
                }
            }
        }
    }
    arg
}

pub fn max_pool2d_fwd(x: &Tensor, p: &Pool2dParams) -> Tensor {
    // Each window's first maximum is what the pool picks: the tangent along x itself.
    max_pool2d_tangent(x, x, p)
}

pub fn max_pool2d_bwd(x: &Tensor, dy: &Tensor, p: &Pool2dParams) -> Tensor {
    let (n, c, h, w) = x.dims4();
    let (_, _, oh, ow) = dy.dims4();
    let mut dx = Tensor::zeros(x.shape());
    for plane in 0..n * c {
        let src = &x.data()[plane * h * w..(plane + 1) * h * w];
        for oy in 0..oh {
            for ox in 0..ow {
                let a = window_argmax(src, h, w, oy, ox, p);
                dx.data_mut()[plane * h * w + a] += dy.data()[(plane * oh + oy) * ow + ox];
            }
        }
    }
    dx
}

/// See [`crate::backend::Backend::max_pool2d_tangent`].
pub fn max_pool2d_tangent(x: &Tensor, v: &Tensor, p: &Pool2dParams) -> Tensor {
    let (n, c, h, w) = x.dims4();
    let (oh, ow) = p.out_hw((h, w)).expect("pool window larger than input");
    let mut y = Tensor::zeros([n, c, oh, ow]);
    for plane in 0..n * c {
        let src = &x.data()[plane * h * w..(plane + 1) * h * w];
        for oy in 0..oh {
            for ox in 0..ow {
                let a = window_argmax(src, h, w, oy, ox, p);
                y.data_mut()[(plane * oh + oy) * ow + ox] = v.data()[plane * h * w + a];
            }
        }
    }
    y
}

/// PyTorch's adaptive bin for output index i: [floor(i·n/o), ceil((i+1)·n/o)).
pub fn adaptive_bin(i: usize, n: usize, o: usize) -> (usize, usize) {
    (i * n / o, ((i + 1) * n).div_ceil(o))
}

pub fn adaptive_avg_pool2d_fwd(x: &Tensor, out_hw: (usize, usize)) -> Tensor {
    let (n, c, h, w) = x.dims4();
    let (oh, ow) = out_hw;
    let mut y = Tensor::zeros([n, c, oh, ow]);
    for plane in 0..n * c {
        for oy in 0..oh {
            let (y0, y1) = adaptive_bin(oy, h, oh);
            for ox in 0..ow {
                let (x0, x1) = adaptive_bin(ox, w, ow);
                let mut acc = 0f64;
                for iy in y0..y1 {
                    for ix in x0..x1 {
                        acc += x.data()[(plane * h + iy) * w + ix] as f64;
                    }
                }
                y.data_mut()[(plane * oh + oy) * ow + ox] =
                    (acc / ((y1 - y0) * (x1 - x0)) as f64) as f32;
            }
        }
    }
    y
}

pub fn adaptive_avg_pool2d_bwd(dy: &Tensor, in_hw: (usize, usize)) -> Tensor {
    let (n, c, oh, ow) = dy.dims4();
    let (h, w) = in_hw;
    let mut dx = Tensor::zeros([n, c, h, w]);
    for plane in 0..n * c {
        for oy in 0..oh {
            let (y0, y1) = adaptive_bin(oy, h, oh);
            for ox in 0..ow {
                let (x0, x1) = adaptive_bin(ox, w, ow);
                let g = dy.data()[(plane * oh + oy) * ow + ox] / ((y1 - y0) * (x1 - x0)) as f32;
                for iy in y0..y1 {
                    for ix in x0..x1 {
                        dx.data_mut()[(plane * h + iy) * w + ix] += g;
                    }
                }
            }
        }
    }
    dx
}

pub fn linear_fwd(x: &Tensor, w: &Tensor, b: Option<&Tensor>) -> Tensor {
    let (n, fin) = (x.shape()[0], x.shape()[1]);
    let fout = w.shape()[0];
    let mut y = Tensor::zeros([n, fout]);
    for i in 0..n {
        for o in 0..fout {
            let mut acc = b.map_or(0.0, |b| b.data()[o]) as f64;
            for j in 0..fin {
                acc += x.data()[i * fin + j] as f64 * w.data()[o * fin + j] as f64;
            }
            y.data_mut()[i * fout + o] = acc as f32;
        }
    }
    y
}

pub fn linear_bwd_data(dy: &Tensor, w: &Tensor) -> Tensor {
    let (n, fout) = (dy.shape()[0], dy.shape()[1]);
    let fin = w.shape()[1];
    let mut dx = Tensor::zeros([n, fin]);
    for i in 0..n {
        for j in 0..fin {
            let mut acc = 0f64;
            for o in 0..fout {
                acc += dy.data()[i * fout + o] as f64 * w.data()[o * fin + j] as f64;
            }
            dx.data_mut()[i * fin + j] = acc as f32;
        }
    }
    dx
}

pub fn add(a: &Tensor, b: &Tensor) -> Tensor {
    let data = a.data().iter().zip(b.data()).map(|(x, y)| x + y).collect();
    Tensor::new(a.shape(), data)
}

pub fn channel_affine(x: &Tensor, scale: &[f32], shift: &[f32]) -> Tensor {
    let (n, c, h, w) = x.dims4();
    let mut y = x.clone();
    for ni in 0..n {
        for ci in 0..c {
            for i in 0..h * w {
                let idx = (ni * c + ci) * h * w + i;
                y.data_mut()[idx] = x.data()[idx] * scale[ci] + shift[ci];
            }
        }
    }
    y
}

pub fn grad_pool(g: &Tensor) -> Tensor {
    let (n, k, h, w) = g.dims4();
    let mut a = Tensor::zeros([n, k]);
    for i in 0..n * k {
        let s: f64 = g.data()[i * h * w..(i + 1) * h * w]
            .iter()
            .map(|&v| v as f64)
            .sum();
        a.data_mut()[i] = (s / (h * w) as f64) as f32;
    }
    a
}

pub fn weighted_sum_relu(a: &Tensor, alpha: &Tensor) -> Tensor {
    let (n, k, h, w) = a.dims4();
    let mut m = Tensor::zeros([n, h, w]);
    for ni in 0..n {
        for i in 0..h * w {
            let mut acc = 0f64;
            for ki in 0..k {
                acc +=
                    alpha.data()[ni * k + ki] as f64 * a.data()[(ni * k + ki) * h * w + i] as f64;
            }
            m.data_mut()[ni * h * w + i] = relu(acc as f32);
        }
    }
    m
}
