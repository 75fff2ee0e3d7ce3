//! Futures for the `ProxyHttp` hooks that never wait.
//!
//! Pingora's hooks return boxed futures (`#[async_trait]`): written as `async fn`, a hook
//! allocates its future's box on every request even when its body never awaits, and most of
//! edgegate's hooks only read and write the request's context and headers. Those hooks do
//! their work when they are called and return [`done`]'s future: zero-sized and ready at
//! its first poll, so its box allocates nothing. A failure is boxed as it is (the error
//! path, rare).

use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;
use std::task::{Context, Poll};

use pingora_error::Result;

/// A hook's boxed future, as `#[async_trait]` declares the trait's methods.
pub type Hook<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// A `ProxyHttp` hook in the shape `#[async_trait]` gives the trait's methods — `self`'s and
/// each borrowed argument's lifetime outliving the boxed future's — written without
/// `#[async_trait]` rewriting its body: the body runs when the hook is called and returns
/// the [`Hook`]. The hook names its borrowed arguments' lifetimes; `self`'s (`'life0`) and the
/// future's (`'async_trait`) are added.
macro_rules! ready_hook {
    (
        $(#[$attr:meta])*
        fn $name:ident<$($lt:lifetime),*>($self:ident $(, $arg:ident : $ty:ty)* $(,)?) -> $out:ty $body:block
    ) => {
        $(#[$attr])*
        fn $name<'life0, $($lt,)* 'async_trait>(
            &'life0 $self $(, $arg: $ty)*
        ) -> $crate::proxy::ready::Hook<'async_trait, $out>
        where
            'life0: 'async_trait,
            $($lt: 'async_trait,)*
            Self: 'async_trait,
        $body
    };
}
pub(crate) use ready_hook;

/// What a finished hook answers.
pub trait Answer: Send + 'static {
    type Output;
    fn answer() -> Self::Output;
}

/// `Ok(())`: the hook went through.
pub enum Through {}

impl Answer for Through {
    type Output = Result<()>;
    fn answer() -> Result<()> {
        Ok(())
    }
}

/// `()`: the hook has nothing to answer (`logging`).
pub enum Nothing {}

impl Answer for Nothing {
    type Output = ();
    fn answer() {}
}

/// `Ok(true)`: the request goes on to the pod (`proxy_upstream_filter`).
pub enum Proceed {}

impl Answer for Proceed {
    type Output = Result<bool>;
    fn answer() -> Result<bool> {
        Ok(true)
    }
}

/// A future that is ready at its first poll with `A`'s answer, and has no size.
pub struct Ready<A>(PhantomData<A>);

impl<A: Answer> Future for Ready<A> {
    type Output = A::Output;
    fn poll(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<A::Output> {
        Poll::Ready(A::answer())
    }
}

/// The finished hook's answer, boxed without an allocation.
pub fn answer<'a, A: Answer>() -> Hook<'a, A::Output> {
    Box::pin(Ready::<A>(PhantomData))
}

/// The result of a hook that went through or failed: no allocation unless it failed.
pub fn done<'a>(result: Result<()>) -> Hook<'a, Result<()>> {
    match result {
        Ok(()) => answer::<Through>(),
        Err(e) => Box::pin(std::future::ready(Err(e))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pingora_error::{Error, ErrorType};

    #[test]
    fn a_finished_hook_answers_at_once_and_its_box_holds_nothing() {
        assert_eq!(std::mem::size_of::<Ready<Through>>(), 0);
        assert_eq!(std::mem::size_of::<Ready<Proceed>>(), 0);
        let waker = std::task::Waker::noop();
        let mut cx = Context::from_waker(waker);
        let mut through = done(Ok(()));
        assert_eq!(std::mem::size_of_val(&*through), 0, "boxed without a size: no allocation");
        assert!(matches!(through.as_mut().poll(&mut cx), Poll::Ready(Ok(()))));
        assert!(matches!(answer::<Proceed>().as_mut().poll(&mut cx), Poll::Ready(Ok(true))));
        assert!(matches!(answer::<Nothing>().as_mut().poll(&mut cx), Poll::Ready(())));
        let mut failed = done(Err(Error::explain(ErrorType::InternalError, "refused")));
        match failed.as_mut().poll(&mut cx) {
            Poll::Ready(Err(e)) => assert_eq!(e.etype(), &ErrorType::InternalError),
            other => panic!("the failure was not passed on: {:?}", other.map(|r| r.is_ok())),
        }
    }
}
