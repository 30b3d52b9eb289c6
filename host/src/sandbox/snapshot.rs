//! Pre-initialised sandboxes: the guest's memory with a model already
//! loaded, turned back into a component whose data segments hold it.
//!
//! Loading a model (parse, type-check, optimise) costs milliseconds in every
//! fresh sandbox; instantiating a component whose memory image already holds
//! the loaded plan costs a copy-on-write mapping. The only module that
//! touches `wasmtime-wizer`.
//!
//! wizer instruments the guest with exports that read its memories and
//! globals; the host calls the guest's own `load` (not an init function
//! baked into the guest: the model arrives as data), then has wizer read the
//! state through those exports and rewrite the *original* component with it.
//! The instrumented guest only ever runs here: requests run the pinned guest
//! or the rewritten component, which has no instrumentation.

use std::pin::pin;
use std::task::{Context, Poll, Waker};

use wasmtime::Store;
use wasmtime::component::{ComponentNamedList, Instance, Lift, WasmList};
use wasmtime_wizer::{ComponentInstanceState, Wizer};

use super::Cause;

/// The guest with wizer's state-reading exports added.
pub(super) fn instrument(guest: &[u8]) -> Result<Vec<u8>, Cause> {
    let (_, instrumented) = contained(|| {
        Wizer::new()
            .instrument_component(guest)
            .map_err(|e| Cause::from(format!("{e:#}")))
    })?;
    Ok(instrumented)
}

/// Runs `f`, turning a panic into an error: wizer asserts and indexes where
/// it assumes a well-behaved guest, and a guest is never trusted to be one.
fn contained<T>(f: impl FnOnce() -> Result<T, Cause>) -> Result<T, Cause> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f))
        .unwrap_or_else(|_| Err("the snapshot tool failed on this guest (it panicked)".into()))
}

/// Reads the state of `instance` (an instantiation of [`instrument`]`(guest)`
/// that has run `load`) and returns `guest` rewritten to start in that state.
pub(super) fn take<T: Send>(
    guest: &[u8],
    store: &mut Store<T>,
    instance: Instance,
) -> Result<Vec<u8>, Cause> {
    let wizer = Wizer::new();
    let mut state = State {
        store,
        instance,
        error: None,
    };
    let snapshot = contained(|| {
        // Parsing again gives the context (which module is which) for the
        // rewrite; the instrumentation is deterministic, so it is the one the
        // instance runs.
        let (cx, _) = wizer
            .instrument_component(guest)
            .map_err(|e| Cause::from(format!("{e:#}")))?;
        let mut future = pin!(wizer.snapshot_component(&cx, &mut state));
        // Every call below completes synchronously, so the future is ready on
        // its first poll; pending would mean a wizer change this code missed.
        match future
            .as_mut()
            .poll(&mut Context::from_waker(Waker::noop()))
        {
            Poll::Ready(result) => result.map_err(|e| Cause::from(format!("{e:#}"))),
            Poll::Pending => Err("the snapshot did not complete synchronously".into()),
        }
    });
    // A failed accessor call comes first: it is why wizer saw no state.
    match (state.error, snapshot) {
        (Some(e), _) | (None, Err(e)) => Err(e),
        (None, Ok(snapshot)) => Ok(snapshot),
    }
}

/// wizer's view of the instance: calls into the accessor exports, with the
/// first failure kept (wizer's trait has no error channel) and every later
/// answer a harmless default, so the snapshot is discarded, never half-used.
struct State<'a, T: 'static> {
    store: &'a mut Store<T>,
    instance: Instance,
    error: Option<Cause>,
}

impl<T: Send> State<'_, T> {
    fn call<R>(&mut self, interface: &str, func: &str) -> Option<R>
    where
        (R,): ComponentNamedList + Lift,
        R: Lift + 'static,
    {
        if self.error.is_some() {
            return None;
        }
        let result = (|| {
            let (_, interface_index) = self
                .instance
                .get_export(&mut *self.store, None, interface)
                .ok_or_else(|| format!("the instrumented guest lacks `{interface}`"))?;
            let (_, func_index) = self
                .instance
                .get_export(&mut *self.store, Some(&interface_index), func)
                .ok_or_else(|| format!("the instrumented guest lacks `{interface}#{func}`"))?;
            let typed = self
                .instance
                .get_typed_func::<(), (R,)>(&mut *self.store, func_index)
                .map_err(|e| format!("{e:#}"))?;
            let (r,) = typed
                .call(&mut *self.store, ())
                .map_err(|e| format!("{e:#}"))?;
            Ok::<_, String>(r)
        })();
        match result {
            Ok(r) => Some(r),
            Err(e) => {
                self.error = Some(e.into());
                None
            }
        }
    }
}

impl<T: Send> ComponentInstanceState for State<'_, T> {
    fn call_func_ret_list_u8(
        &mut self,
        instance: &str,
        func: &str,
        contents: impl FnOnce(&[u8]) + Send,
    ) -> impl Future<Output = ()> + Send {
        match self.call::<WasmList<u8>>(instance, func) {
            Some(list) => contents(list.as_le_slice(&*self.store)),
            None => contents(&[]),
        }
        std::future::ready(())
    }

    fn call_func_ret_s32(
        &mut self,
        instance: &str,
        func: &str,
    ) -> impl Future<Output = i32> + Send {
        std::future::ready(self.call(instance, func).unwrap_or_default())
    }

    fn call_func_ret_s64(
        &mut self,
        instance: &str,
        func: &str,
    ) -> impl Future<Output = i64> + Send {
        std::future::ready(self.call(instance, func).unwrap_or_default())
    }

    fn call_func_ret_f32(
        &mut self,
        instance: &str,
        func: &str,
    ) -> impl Future<Output = u32> + Send {
        std::future::ready(
            self.call::<f32>(instance, func)
                .map(f32::to_bits)
                .unwrap_or_default(),
        )
    }

    fn call_func_ret_f64(
        &mut self,
        instance: &str,
        func: &str,
    ) -> impl Future<Output = u64> + Send {
        std::future::ready(
            self.call::<f64>(instance, func)
                .map(f64::to_bits)
                .unwrap_or_default(),
        )
    }
}
