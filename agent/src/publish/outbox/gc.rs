//! Garbage: parts directories that no entry refers to (a commit that failed after its
//! parts were written, a leader deposed between the two, a discard interrupted).

use zookeeper_client::MultiReadResult;

use super::{
    codec::{self, Rejected},
    names::{children, parse_name, rejected_path, result_path},
    store::delete_parts,
};
use crate::coord::{CoordError, FleetClient, paths::PARTS};

/// Deletes parts directories no entry refers to: those of rounds before the current one (a
/// commit needs its round open, so none can refer to them any more) that neither `/results`
/// nor `/rejected` names, read in one multi-read so that a concurrent move between the two is
/// seen. Reads the round only when there are parts at all.
pub async fn collect_garbage(client: &FleetClient) -> Result<usize, CoordError> {
    let dirs = children(client, PARTS).await?;
    if dirs.is_empty() {
        return Ok(0);
    }
    let Some(current) = crate::coord::barrier::current(client)
        .await?
        .map(|s| s.round)
    else {
        return Ok(0);
    };
    let mut deleted = 0;
    for dir in dirs {
        let Some(round) = dir.get(..20).and_then(parse_name) else {
            continue;
        };
        if round >= current {
            continue;
        }
        let full = format!("{PARTS}/{dir}");
        let mut reader = client.new_multi_reader();
        for path in [result_path(round), rejected_path(round)] {
            reader
                .add_get_data(&path)
                .map_err(|e| CoordError::zk("read (in multi)", &path, e))?;
        }
        let results = reader
            .commit()
            .await
            .map_err(|e| CoordError::zk("read (multi)", &full, e))?;
        let referenced = results.into_iter().any(|result| match result {
            MultiReadResult::Data { data, .. } => {
                let dir = match serde_json::from_slice::<Rejected>(&data) {
                    Ok(rejected) => codec::parts_dir(&rejected.entry),
                    Err(_) => codec::parts_dir_of(&data),
                };
                dir.as_deref() == Some(full.as_str())
            }
            _ => false,
        });
        if !referenced {
            delete_parts(client, &full).await;
            deleted += 1;
        }
    }
    Ok(deleted)
}
