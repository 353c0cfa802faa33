//! The polling source: diffs, keeps the last set on errors, counts errors.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_core::Stream;
use seawall::discover::{Change, Polling};
use tokio_test::{assert_pending, task};

type Answer = Result<Vec<(&'static str, u32)>, String>;

fn script(answers: Vec<Answer>) -> impl FnMut() -> std::future::Ready<Answer> {
    let answers = Arc::new(Mutex::new(VecDeque::from(answers)));
    move || {
        let next = answers.lock().unwrap().pop_front();
        std::future::ready(next.unwrap_or_else(|| Err("script exhausted".into())))
    }
}

async fn next<S>(stream: &mut S) -> Change<&'static str, u32>
where
    S: Stream<Item = Result<Change<&'static str, u32>, std::convert::Infallible>> + Unpin,
{
    let item = std::future::poll_fn(|cx| std::pin::Pin::new(&mut *stream).poll_next(cx)).await;
    item.unwrap().unwrap()
}

fn show(change: Change<&'static str, u32>) -> String {
    match change {
        Change::Insert(k, v) => format!("+{k}={v}"),
        Change::Remove(k) => format!("-{k}"),
    }
}

#[tokio::test(start_paused = true)]
async fn polls_diff_and_survive_errors() {
    let mut polling = Polling::new(
        "catalogue",
        Duration::from_secs(5),
        script(vec![
            Ok(vec![("a", 1), ("b", 1)]),
            Ok(vec![("b", 1), ("a", 1)]), // same set: nothing
            Err("catalogue down".into()), // keep the last set
            Ok(vec![("b", 1), ("c", 1)]),
            Ok(vec![("b", 2), ("c", 1)]), // a changed value replaces
        ]),
    );
    let errors = polling.errors();

    let mut first = vec![
        show(next(&mut polling).await),
        show(next(&mut polling).await),
    ];
    first.sort();
    assert_eq!(first, ["+a=1", "+b=1"]);

    // The unchanged answer and the error produce nothing: 15 s later only the third answer's
    // changes come out, and one error was counted.
    let start = tokio::time::Instant::now();
    let mut third = vec![
        show(next(&mut polling).await),
        show(next(&mut polling).await),
    ];
    third.sort();
    assert_eq!(third, ["+c=1", "-a"]);
    assert_eq!(start.elapsed(), Duration::from_secs(15));
    assert_eq!(errors.count(), 1);

    assert_eq!(show(next(&mut polling).await), "+b=2");

    // The script is exhausted: every later poll fails (one per interval) and nothing is removed.
    let mut rest = task::spawn(next(&mut polling));
    assert_pending!(rest.poll());
    drop(rest);
    let quiet = tokio::time::timeout(Duration::from_secs(21), next(&mut polling)).await;
    assert!(quiet.is_err(), "no change may come out of failed polls");
    assert_eq!(errors.count(), 1 + 4, "one failed poll every 5 s");
}
