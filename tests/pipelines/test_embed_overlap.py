"""The embedding step cuts the next clips while the device embeds the batch before.

Stand-ins of known cost (bench/overlap_bench.py) record when each video is
sampled and when each batch is on the "device"; the tests assert on those
intervals, not on how long the job took.
"""

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.testing.util import assert_that, equal_to

from bench import overlap_bench
from pipelines import embed
from pipelines.common import FAILURES

NUM_VIDEOS, CLIPS_PER_VIDEO = 6, 2
HOST_S, DEVICE_S = 0.2, 0.2


def _config(prefetch_videos: int) -> embed.EmbedJobConfig:
  # One video's clips make one batch, so batch n holds video n.
  return embed.EmbedJobConfig(
      checkpoint_path="",
      work_dir="",
      output_dir="",
      num_train_clips=CLIPS_PER_VIDEO,
      num_test_windows=0,
      batch_size=CLIPS_PER_VIDEO,
      prefetch_videos=prefetch_videos,
  )


def _intervals(tmp_path, prefetch_videos: int):
  """(video -> its sampling interval, video -> its batch's device interval)."""
  events_path = str(tmp_path / "events.jsonl")
  overlap_bench.run_job(
      overlap_bench.bench_videos(NUM_VIDEOS),
      _config(prefetch_videos),
      overlap_bench.SleepingHandler(DEVICE_S, CLIPS_PER_VIDEO, events_path),
      overlap_bench.SleepingSampler(HOST_S, events_path),
  )
  events = overlap_bench.read_events(events_path)
  host = {e["videos"][0]: (e["start"], e["end"]) for e in events if e["kind"] == overlap_bench.HOST}
  device_batches = [e for e in events if e["kind"] == overlap_bench.DEVICE]
  assert sorted(e["videos"] for e in device_batches) == [[n] for n in range(NUM_VIDEOS)]
  device = {e["videos"][0]: (e["start"], e["end"]) for e in device_batches}
  return host, device


def _overlap(a: tuple[float, float], b: tuple[float, float]) -> bool:
  return a[0] < b[1] and b[0] < a[1]


def test_later_clips_are_cut_while_the_device_embeds_a_batch(tmp_path):
  """Batch n is on the device while video n + 2 is sampled.

  Not n + 1: Beam's BatchElements sends a full batch on only when the next
  clip arrives, so batch n leaves once video n + 1 is sampled.
  """
  host, device = _intervals(tmp_path, prefetch_videos=1)
  for n in range(NUM_VIDEOS - 2):
    assert _overlap(host[n + 2], device[n]), (n, host, device)


def test_without_prefetch_sampling_and_inference_take_turns(tmp_path):
  host, device = _intervals(tmp_path, prefetch_videos=0)
  assert not any(_overlap(h, d) for h in host.values() for d in device.values())


class _FailingSampler(overlap_bench.SleepingSampler):

  def __call__(self, ref, config):
    if overlap_bench.video_index(ref.video_id) == 1:
      raise ValueError("corrupt frame")
    return super().__call__(ref, config)


class _FailingHandler(overlap_bench.SleepingHandler):

  def run_inference(self, batch, model, inference_args=None):
    if any(clip.flat[0] == 3 for clip in batch):
      raise MemoryError("out of device memory")
    return super().run_inference(batch, model, inference_args)


def test_a_failed_sampling_or_batch_fails_its_videos_once_and_spares_the_others():
  videos = overlap_bench.bench_videos(NUM_VIDEOS)
  with beam.Pipeline(options=PipelineOptions(overlap_bench.IN_PROCESS)) as pipeline:
    embedded = (
        pipeline
        | beam.Create(videos, reshuffle=False)
        | embed.EmbedClips(
            _config(prefetch_videos=2), _FailingHandler(0.0, CLIPS_PER_VIDEO), _FailingSampler(0.0)
        )
    )
    assert_that(
        embedded[embed.WRITTEN],
        equal_to(
            [v.video_id for v in videos if overlap_bench.video_index(v.video_id) not in (1, 3)]
        ),
        label="EmbeddedVideos",
    )
    assert_that(
        embedded[FAILURES] | beam.Map(lambda f: (f["video_id"], f["stage"], f["reason"])),
        equal_to(
            [
                (videos[1].video_id, embed.STAGE_SAMPLE, "ValueError: corrupt frame"),
                (
                    videos[3].video_id,
                    embed.STAGE_EMBED,
                    "MemoryError: out of device memory",
                ),
            ]
        ),
        label="Failures",
    )
