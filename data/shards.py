"""Feature extraction over several processes: which videos each one extracts, and how they meet.

Two ways to run n processes over one list of videos (data/extract_features.py):
- torchrun (`--nproc_per_node=G [--nnodes=N --rdzv_endpoint=...]`): ranks 0 .. n-1 of one job.
  Rank 0 lists the videos still to extract and splits them; every rank receives its share. At
  the end the ranks gather their failures (which also waits for all of them) and rank 0 alone
  writes what summarises the job. The process group is gloo whatever the device: only these small
  Python objects travel between ranks.
- `--shard i/n`: independent processes (a Slurm array, machines sharing a file system). Each
  splits the whole list the same way, without talking to the others, and extracts what of its
  part is still missing.

The split is balanced by frame count: the longest video first, each to the least loaded process
(ties to the lowest rank), so every process gets about the same number of frames.
"""
import dataclasses
import datetime
import heapq
import os

import torch
import torch.distributed as dist

# Ranks wait for the slowest one at the end: the wait may be as long as a whole share of videos.
WAIT_LIMIT = datetime.timedelta(days=7)


@dataclasses.dataclass(frozen=True)
class Shard:
    rank: int = 0
    count: int = 1
    local_rank: int = 0     # the process's index on its machine: its GPU under torchrun
    local_count: int = 1    # processes on this machine, which share its CPU cores
    torchrun: bool = False

    @property
    def writes_summary(self):
        """Whether this process writes the table and the summary: rank 0 of a torchrun job, or any --shard."""
        return not self.torchrun or self.rank == 0

    @property
    def joined(self):
        """Whether this process is one rank of a torchrun job of several."""
        return self.torchrun and self.count > 1


SINGLE = Shard()


def parse_shard(text):
    """'i/n' (0 <= i < n) -> Shard; ValueError naming the option otherwise."""
    try:
        rank, count = (int(part) for part in text.split('/'))
    except ValueError:
        raise ValueError(f'--shard {text!r}: expected i/n, e.g. 0/4') from None
    if not 0 <= rank < count:
        raise ValueError(f'--shard {text}: need 0 <= i < n')
    return Shard(rank, count)


def from_environment(environ=os.environ):
    """The Shard torchrun describes in the environment, or None when not started by torchrun."""
    if 'LOCAL_RANK' not in environ or 'WORLD_SIZE' not in environ:
        return None
    return Shard(int(environ['RANK']), int(environ['WORLD_SIZE']), int(environ['LOCAL_RANK']),
                 int(environ.get('LOCAL_WORLD_SIZE', environ['WORLD_SIZE'])), torchrun=True)


def start(shard):
    if shard.joined and not dist.is_initialized():
        dist.init_process_group('gloo', timeout=WAIT_LIMIT)


def stop(shard):
    if shard.joined and dist.is_initialized():
        dist.destroy_process_group()


def device_for(shard, device):
    """A torchrun rank on a CUDA machine takes GPU LOCAL_RANK; every other case keeps `device`."""
    if not (shard.torchrun and device == 'cuda'):
        return device
    if shard.local_rank >= torch.cuda.device_count():
        raise ValueError(f'rank {shard.rank} is process {shard.local_rank} of its machine, which has only '
                         f'{torch.cuda.device_count()} GPU(s): start at most that many per machine (--nproc_per_node)')
    torch.cuda.set_device(shard.local_rank)
    return f'cuda:{shard.local_rank}'


def balanced_split(weights, count):
    """owner[i] in 0 .. count-1 of item i: heaviest first, each to the least loaded owner (ties: the lowest)."""
    owners = [0] * len(weights)
    loads = [(0, rank) for rank in range(count)]
    for i in sorted(range(len(weights)), key=lambda i: (-weights[i], i)):
        load, rank = heapq.heappop(loads)
        owners[i] = rank
        heapq.heappush(loads, (load + weights[i], rank))
    return owners


def share(videos, shard, frame_count, pending):
    """[(video, what to extract)] of this process.

    frame_count(video) -> its weight in the split; pending(videos) -> [(video, what)] of those not yet
    finished. A torchrun job splits what is pending (as rank 0 sees it: one view for all ranks); a
    --shard splits the whole list, so that every shard, started whenever, agrees on the parts."""
    if shard.joined:
        plan = [None]
        if shard.rank == 0:
            todo = pending(videos)
            owners = balanced_split([frame_count(video) for video, _ in todo], shard.count)
            plan = [[[item for item, owner in zip(todo, owners) if owner == rank] for rank in range(shard.count)]]
        dist.broadcast_object_list(plan, src=0)
        return plan[0][shard.rank]
    if shard.count > 1:
        owners = balanced_split([frame_count(video) for video in videos], shard.count)
        videos = [video for video, owner in zip(videos, owners) if owner == shard.rank]
    return pending(videos)


def gather_failures(shard, failures):
    """{video: message} of every rank (this process's alone without torchrun); waits for all ranks."""
    if not shard.joined:
        return dict(failures)
    everyone = [None] * shard.count
    dist.all_gather_object(everyone, failures)
    return {video: message for part in everyone for video, message in part.items()}


def barrier(shard):
    if shard.joined:
        dist.barrier()
