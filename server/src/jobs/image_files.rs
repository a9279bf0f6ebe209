//! Files in stored images, read by an agent for the console and the API: an image's chain,
//! folder listings, and downloads streamed from the agent through the server.

use std::time::Duration;

use holdfast_proto::job::ImageWritten;
use holdfast_proto::request::{BrowseImage, ExportFiles};
use holdfast_proto::{ExportFormat, ImageRef, Listing, RunReport};

use super::{job_context, DispatchError, Dispatcher};
use crate::gateway::DataStream;
use crate::store::jobs::ImageRow;
use crate::store::{Store, StoreError};

/// How long a listing may take: the agent opens the chain on its target and mounts it.
const BROWSE_TIMEOUT: Duration = Duration::from_secs(120);

/// The chain that ends at `head`, oldest first, from `images` (a job's images on one agent):
/// each image's base found by name on the same target. An image whose base is not among
/// them (deleted, or written before records were kept) starts the list.
pub fn chain_to<'a>(images: &'a [ImageRow], head: &'a ImageRow) -> Vec<&'a ImageRow> {
    let mut chain = vec![head];
    let mut at = head;
    while let Some(base) = at.base_name.as_deref() {
        let found = images
            .iter()
            .rev()
            .find(|i| i.name == base && i.target_id == at.target_id && i.id < at.id);
        match found {
            Some(b) if chain.len() < images.len() + 1 => {
                chain.push(b);
                at = b;
            }
            _ => break,
        }
    }
    chain.reverse();
    chain
}

/// What the run that wrote `image` reported about it (none for reports stored before
/// this was kept, or a report that cannot be read).
pub async fn written_by_run(
    store: &Store,
    image: &ImageRow,
) -> Result<Option<ImageWritten>, StoreError> {
    Ok(store
        .run(image.run_id)
        .await?
        .and_then(|r| r.report)
        .and_then(|t| serde_json::from_str::<RunReport>(&t).ok())
        .and_then(|r| r.images.into_iter().find(|i| i.name == image.name)))
}

/// The chain up to `image`, oldest first, from its job's images on its agent.
pub async fn chain_of(store: &Store, image: &ImageRow) -> Result<Vec<ImageRow>, StoreError> {
    let siblings = match image.job_id {
        Some(job) => store.job_images(job, image.agent_id).await?,
        None => Vec::new(),
    };
    Ok(chain_to(&siblings, image).into_iter().cloned().collect())
}

impl Dispatcher {
    /// What an agent needs to open `image` (its target's credentials and its job's
    /// password, from the vault), for `partition` of a disk image, to be opened by agent
    /// `agent_id`.
    pub async fn image_ref(
        &self,
        image: &ImageRow,
        partition: Option<u32>,
        agent_id: i64,
    ) -> Result<ImageRef, DispatchError> {
        if image.deleted_at.is_some() {
            return Err(DispatchError::NotFound(format!(
                "image '{}' (deleted by retention)",
                image.name
            )));
        }
        let target_id = image.target_id.ok_or_else(|| {
            DispatchError::NotFound(format!("the target image '{}' was written to", image.name))
        })?;
        let target = self
            .store
            .target(target_id)
            .await?
            .ok_or_else(|| DispatchError::NotFound(format!("target {target_id}")))?;
        let password = match image.job_id {
            Some(job_id) => match self.store.job(job_id).await? {
                Some(job) => self.unseal_job_secret(&job_context(job_id), job.secret.as_deref())?,
                None => None,
            },
            None => None,
        };
        Ok(ImageRef {
            target: self.access(&target, agent_id).await?,
            name: image.name.clone(),
            password,
            partition,
        })
    }

    /// Agent `agent_id` lists `path` inside `image`.
    pub async fn browse(
        &self,
        agent_id: i64,
        image: ImageRef,
        path: String,
        total: bool,
    ) -> Result<Listing, DispatchError> {
        let ask = BrowseImage {
            image: Box::new(image),
            path,
            total,
        };
        match self.gateway.request(agent_id, ask, BROWSE_TIMEOUT).await {
            Ok(listing) => Ok(listing),
            Err(e) => Err(self.on_host(agent_id, e).await),
        }
    }

    /// Agent `agent_id` streams `paths` of `image` in `format`: once the paths are found,
    /// the data as it comes.
    pub async fn export(
        &self,
        agent_id: i64,
        image: ImageRef,
        paths: Vec<String>,
        format: ExportFormat,
    ) -> Result<DataStream, DispatchError> {
        let ask = ExportFiles {
            image: Box::new(image),
            paths,
            format,
        };
        match self.gateway.stream(agent_id, ask, BROWSE_TIMEOUT).await {
            Ok((_started, data)) => Ok(data),
            Err(e) => Err(self.on_host(agent_id, e).await),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn img(id: i64, name: &str, base: Option<&str>, target: i64) -> ImageRow {
        ImageRow {
            id,
            run_id: id,
            job_id: Some(1),
            agent_id: 1,
            target_id: Some(target),
            name: name.into(),
            method: if base.is_some() {
                "incremental"
            } else {
                "full"
            }
            .into(),
            base_name: base.map(Into::into),
            image_id: format!("id{id}"),
            bytes: 1,
            verified: Some(true),
            created_at: id,
            deleted_at: None,
            source: None,
        }
    }

    #[test]
    fn a_chain_is_followed_back_by_base_name_on_the_same_target() {
        let images = vec![
            img(1, "full.hfi", None, 1),
            img(2, "inc1.hfi", Some("full.hfi"), 1),
            img(3, "full.hfi", None, 2),
            img(4, "inc2.hfi", Some("inc1.hfi"), 1),
            img(5, "inc3.hfi", Some("inc2.hfi"), 1),
        ];
        let ids = |c: Vec<&ImageRow>| c.iter().map(|i| i.id).collect::<Vec<_>>();
        assert_eq!(ids(chain_to(&images, &images[3])), [1, 2, 4]);
        assert_eq!(ids(chain_to(&images, &images[4])), [1, 2, 4, 5]);
        assert_eq!(ids(chain_to(&images, &images[2])), [3]);
        // A base that is gone: the chain starts where the records do.
        let orphan = img(9, "inc9.hfi", Some("gone.hfi"), 1);
        assert_eq!(ids(chain_to(&images, &orphan)), [9]);
    }
}
