//! A one-shot, core-local event: tasks wait on it, one call to `fire` wakes them all and every
//! later wait returns at once. Used to stop accept loops and idle functions at shutdown.

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};

#[derive(Clone, Default)]
pub struct Notify {
    inner: Rc<Inner>,
}

#[derive(Default)]
struct Inner {
    fired: Cell<bool>,
    wakers: RefCell<Vec<Waker>>,
}

impl Notify {
    pub fn fire(&self) {
        self.inner.fired.set(true);
        for waker in self.inner.wakers.borrow_mut().drain(..) {
            waker.wake();
        }
    }

    pub fn is_fired(&self) -> bool {
        self.inner.fired.get()
    }

    pub fn wait(&self) -> Wait {
        Wait {
            inner: self.inner.clone(),
        }
    }
}

pub struct Wait {
    inner: Rc<Inner>,
}

impl Future for Wait {
    type Output = ();
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.inner.fired.get() {
            return Poll::Ready(());
        }
        let mut wakers = self.inner.wakers.borrow_mut();
        if !wakers.iter().any(|w| w.will_wake(cx.waker())) {
            wakers.push(cx.waker().clone());
        }
        Poll::Pending
    }
}
