//! The key space the server holds, and waiting for keys: every change wakes the waiting
//! requests, which look again.

use std::collections::HashMap;
use std::sync::Mutex;

use tokio::sync::Notify;
use tokio::time::Instant;

/// The outcome of a compare-and-set: whether the new value went in, and the value now stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Swap {
    /// True when the expected value matched and the new value is now stored.
    pub swapped: bool,
    /// The value stored after the call (`None` when the key is absent).
    pub current: Option<Vec<u8>>,
}

#[derive(Default)]
struct Inner {
    map: HashMap<String, Vec<u8>>,
    /// Key and value bytes held.
    bytes: usize,
}

impl Inner {
    /// Stores `value` under `key` if the store stays within `max_bytes`.
    fn put(&mut self, key: &str, value: Vec<u8>, max_bytes: usize) -> Result<(), String> {
        let old = self.map.get(key).map_or(0, |v| key.len() + v.len());
        let after = self.bytes - old + key.len() + value.len();
        if after > max_bytes {
            return Err(format!(
                "storing {} bytes under `{key}` would make the store hold {after} bytes, over its limit of \
                 {max_bytes}; delete keys that are no longer needed",
                value.len()
            ));
        }
        self.bytes = after;
        self.map.insert(key.to_string(), value);
        Ok(())
    }
}

/// The keys and values, with the notifier that wakes waiting requests.
pub(crate) struct State {
    inner: Mutex<Inner>,
    changed: Notify,
    max_bytes: usize,
}

impl State {
    /// An empty store that holds at most `max_bytes` of keys and values.
    pub(crate) fn new(max_bytes: usize) -> State {
        State {
            inner: Mutex::new(Inner::default()),
            changed: Notify::new(),
            max_bytes,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // Nothing panics while holding the lock; recover the data if something ever did.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Sets `key` to `value`.
    pub(crate) fn set(&self, key: &str, value: Vec<u8>) -> Result<(), String> {
        self.lock().put(key, value, self.max_bytes)?;
        self.changed.notify_waiters();
        Ok(())
    }

    /// The value of `key`, if set.
    pub(crate) fn try_get(&self, key: &str) -> Option<Vec<u8>> {
        self.lock().map.get(key).cloned()
    }

    /// Adds `delta` to the integer stored (as decimal text) under `key`, 0 when absent; returns
    /// the new value.
    pub(crate) fn add(&self, key: &str, delta: i64) -> Result<i64, String> {
        let mut inner = self.lock();
        let now = match inner.map.get(key) {
            None => 0,
            Some(v) => std::str::from_utf8(v)
                .ok()
                .and_then(|s| s.parse::<i64>().ok())
                .ok_or_else(|| {
                    format!(
                        "add on `{key}`, whose value ({} bytes) is not a decimal integer; use another key \
                         for counters",
                        v.len()
                    )
                })?,
        };
        let new = now
            .checked_add(delta)
            .ok_or_else(|| format!("add of {delta} to `{key}` (now {now}) overflows a 64-bit integer"))?;
        inner.put(key, new.to_string().into_bytes(), self.max_bytes)?;
        drop(inner);
        self.changed.notify_waiters();
        Ok(new)
    }

    /// Sets `key` to `new` when its value is `expected` (`None`: when the key is absent).
    pub(crate) fn compare_and_set(&self, key: &str, expected: Option<&[u8]>, new: Vec<u8>) -> Result<Swap, String> {
        let mut inner = self.lock();
        let current = inner.map.get(key).map(Vec::as_slice);
        if current != expected {
            return Ok(Swap {
                swapped: false,
                current: current.map(<[u8]>::to_vec),
            });
        }
        inner.put(key, new.clone(), self.max_bytes)?;
        drop(inner);
        self.changed.notify_waiters();
        Ok(Swap {
            swapped: true,
            current: Some(new),
        })
    }

    /// Removes `key`; true when it existed.
    pub(crate) fn delete(&self, key: &str) -> bool {
        let mut inner = self.lock();
        match inner.map.remove(key) {
            Some(v) => {
                inner.bytes -= key.len() + v.len();
                drop(inner);
                self.changed.notify_waiters();
                true
            }
            None => false,
        }
    }

    /// Number of keys held.
    pub(crate) fn len(&self) -> usize {
        self.lock().map.len()
    }

    /// Waits until `look` finds what it wants in the map, or `deadline` passes (then `Err` with
    /// what `look` reports last).
    async fn wait_until<T, E>(
        &self,
        deadline: Instant,
        mut look: impl FnMut(&HashMap<String, Vec<u8>>) -> Result<T, E>,
    ) -> Result<T, E> {
        loop {
            // Registered before looking, so a change between the look and the sleep still wakes us.
            let notified = self.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let last = look(&self.lock().map);
            if last.is_ok() {
                return last;
            }
            tokio::select! {
                _ = notified => {}
                _ = tokio::time::sleep_until(deadline) => return look(&self.lock().map),
            }
        }
    }

    /// The value of `key` once it is set, or `None` when `deadline` passes first.
    pub(crate) async fn get(&self, key: &str, deadline: Instant) -> Option<Vec<u8>> {
        self.wait_until(deadline, |m| m.get(key).cloned().ok_or(())).await.ok()
    }

    /// Waits until every key in `keys` is set; `Err` with the missing keys when `deadline` passes.
    pub(crate) async fn wait(&self, keys: &[String], deadline: Instant) -> Result<(), Vec<String>> {
        self.wait_until(deadline, |m| {
            let missing: Vec<String> = keys.iter().filter(|k| !m.contains_key(*k)).cloned().collect();
            if missing.is_empty() { Ok(()) } else { Err(missing) }
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::time::Duration;

    #[test]
    fn add_cas_delete_and_the_byte_limit() {
        let s = State::new(20);
        assert_eq!(s.add("n", 5), Ok(5));
        assert_eq!(s.add("n", -7), Ok(-2));
        assert_eq!(s.try_get("n").unwrap(), b"-2");
        s.set("t", b"x".to_vec()).unwrap();
        assert!(s.add("t", 1).unwrap_err().contains("not a decimal integer"));
        s.set("m", i64::MAX.to_string().into_bytes()).unwrap_err(); // 1 + 19 bytes: over 20 with the rest
        assert!(s.set("big", vec![0; 30]).unwrap_err().contains("over its limit of 20"));
        assert_eq!(
            s.compare_and_set("c", Some(b"a"), b"b".to_vec()).unwrap(),
            Swap {
                swapped: false,
                current: None
            }
        );
        assert!(s.compare_and_set("c", None, b"b".to_vec()).unwrap().swapped);
        assert!(s.compare_and_set("c", Some(b"b"), b"z".to_vec()).unwrap().swapped);
        assert_eq!(s.try_get("c").unwrap(), b"z");
        assert!(s.delete("c"));
        assert!(!s.delete("c"));
        assert_eq!(s.len(), 2);
        // Deleting gave the bytes back.
        s.set("big", vec![0; 10]).unwrap();
    }

    #[test]
    fn add_overflow_is_an_error() {
        let s = State::new(1 << 10);
        s.add("n", i64::MAX).unwrap();
        assert!(s.add("n", 1).unwrap_err().contains("overflows"));
        assert_eq!(s.try_get("n").unwrap(), i64::MAX.to_string().as_bytes());
    }

    #[tokio::test]
    async fn waits_wake_on_set_and_time_out() {
        let s = Arc::new(State::new(1 << 10));
        let s2 = s.clone();
        let setter = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(50)).await;
            s2.set("a", b"1".to_vec()).unwrap();
            tokio::time::sleep(Duration::from_millis(50)).await;
            s2.set("b", b"2".to_vec()).unwrap();
        });
        let far = Instant::now() + Duration::from_secs(5);
        assert_eq!(s.get("a", far).await.unwrap(), b"1");
        s.wait(&["a".into(), "b".into()], far).await.unwrap();
        setter.await.unwrap();
        let soon = Instant::now() + Duration::from_millis(30);
        assert_eq!(
            s.wait(&["a".into(), "zz".into()], soon).await,
            Err(vec!["zz".to_string()])
        );
        assert!(Instant::now() >= soon);
    }
}
