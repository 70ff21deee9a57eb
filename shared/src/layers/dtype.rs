//! The one f32/f64 dispatch of the CustomOps' CPU kernels.

use candle_core::{CpuStorage, Shape};

/// A kernel's result of one float type, wrapped into candle's storage: a `Vec<f32>` or
/// `Vec<f64>` becomes a [`CpuStorage`], a `(Vec<_>, Shape)` a `(CpuStorage, Shape)`.
pub(crate) trait IntoCpuStorage {
    /// The wrapped result.
    type Output;
    /// Wrap the result.
    fn into_cpu_storage(self) -> Self::Output;
}

impl IntoCpuStorage for Vec<f32> {
    type Output = CpuStorage;
    fn into_cpu_storage(self) -> CpuStorage {
        CpuStorage::F32(self)
    }
}

impl IntoCpuStorage for Vec<f64> {
    type Output = CpuStorage;
    fn into_cpu_storage(self) -> CpuStorage {
        CpuStorage::F64(self)
    }
}

impl<V: IntoCpuStorage<Output = CpuStorage>> IntoCpuStorage for (V, Shape) {
    type Output = (CpuStorage, Shape);
    fn into_cpu_storage(self) -> (CpuStorage, Shape) {
        (self.0.into_cpu_storage(), self.1)
    }
}

/// Run a generic CPU kernel on f32 or f64 storages.
///
/// `float_dispatch!([s1, s2], T => body, "error format", args…)` evaluates `body` (a
/// `candle_core::Result` of `Vec<T>` or `(Vec<T>, Shape)`) with the type alias `T` bound to
/// `f32` when every storage is F32, or to `f64` when every storage is F64, and wraps the
/// result with [`IntoCpuStorage`]; any other dtype (or a mix) returns the error built from
/// the format arguments. The macro's value is a `candle_core::Result` of the wrapped result.
macro_rules! float_dispatch {
    ([$($s:expr),+ $(,)?], $T:ident => $body:expr, $($err:tt)+) => {{
        use candle_core::backend::BackendStorage as _;
        use $crate::layers::dtype::IntoCpuStorage as _;
        let dtypes = [$($s.dtype()),+];
        if dtypes.iter().all(|&d| d == candle_core::DType::F32) {
            #[allow(dead_code)]
            type $T = f32;
            $body.map(|v| v.into_cpu_storage())
        } else if dtypes.iter().all(|&d| d == candle_core::DType::F64) {
            #[allow(dead_code)]
            type $T = f64;
            $body.map(|v| v.into_cpu_storage())
        } else {
            Err(candle_core::Error::Msg(format!($($err)+)).bt())
        }
    }};
}
pub(crate) use float_dispatch;
