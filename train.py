"""Train the main-stream SSAD or Decouple-SSAD on one feature stream of THUMOS14 (or any dataset
load_data reads: the model gets one output per class of the data, load_data.class_list).

    python train.py --mode temporal --pretrain UCF101 --method decouple_ssad
    python train.py ... --fresh                   # start over instead of resuming
    python train.py ... --learning_rates=1e-4,1e-5 --device=cpu   # any Config field
    torchrun --nproc_per_node=4 train.py ...      # several GPUs (gloo on CPU)

Writes one checkpoint per epoch, models/<run>/model-ep-<e>.pt (the newest
`keep_checkpoints` are kept; none with --save_checkpoints=false) and
models/<run>/config.json, and one loss line per epoch to logs/<run>.log, where
<run> = <mode>_<pretrain>_<method>.
Rerunning the same command resumes from the newest checkpoint and ends with
the same weights as an uninterrupted run.

The whole training set lives on the device and a batch is an index-select,
so a step never waits for the host; losses are summed on the device and read
once per epoch (and every POSTFIX_EVERY steps for the progress bar). On one GPU
the step is captured once as a CUDA graph and replayed for every full batch
(cuda_graph), with the easy-negative draws made before each replay. With
several processes each runs a slice of every batch and all compute the loss of
the whole batch, so they end with the single-process weights up to rounding.
"""
import argparse
import json
import math
import os
import re
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch
import torch.distributed as dist
import torch.distributed.nn.functional as dist_nn
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

import checkpoints
import classes
import config
import fileio
import load_data
import operations

POSTFIX_EVERY = 25  # steps between progress-bar loss updates; each one syncs host and device
WARM_STEPS = 3      # eager steps before a CUDA graph is captured
TERMS = ('total', 'class', 'loc', 'conf')


# -----------------------------------------------------------------------------
# devices and processes

def setup_device(cfg):
    """-> (device, rank, world_size, started_process_group). torchrun sets RANK / WORLD_SIZE / LOCAL_RANK."""
    device = operations.resolve_device(cfg.device)
    world = int(os.environ.get('WORLD_SIZE', '1'))
    started = False
    if world > 1:
        if device.type == 'cuda':
            device = torch.device('cuda', int(os.environ.get('LOCAL_RANK', '0')))
            torch.cuda.set_device(device)
        if not dist.is_initialized():
            dist.init_process_group('nccl' if device.type == 'cuda' else 'gloo')
            started = True
    rank = dist.get_rank() if world > 1 else 0
    operations.set_precision(cfg)
    return device, rank, world, started


def tree_map(fn, tree):
    """Apply fn to every tensor in nested dicts / lists / tuples (the model's outputs)."""
    if isinstance(tree, torch.Tensor):
        return fn(tree)
    if isinstance(tree, dict):
        return {k: tree_map(fn, v) for k, v in tree.items()}
    if isinstance(tree, (list, tuple)):
        return type(tree)(tree_map(fn, v) for v in tree)
    return tree


def gather_batch(outputs, n):
    """Concatenate every rank's slice of the batch, in batch order, keeping autograd.

    Every rank then computes the loss of the whole batch (same numbers, same
    easy-negative draw), so the DDP-averaged gradient is the gradient of the
    single-process loss: all_gather's backward sums the ranks' identical
    gradients (x world) and DDP divides by world.
    """
    return tree_map(lambda t: torch.cat(dist_nn.all_gather(t), 0)[:n], outputs)


# -----------------------------------------------------------------------------
# checkpoints, RNG states, log

def rng_state(generator):
    """Every RNG a run draws from, in a form torch.load(weights_only=True) accepts."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    return {'torch': torch.get_rng_state(),
            'cuda': torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            'numpy': {'kind': kind, 'keys': torch.from_numpy(keys.astype(np.int64)), 'pos': int(pos),
                      'has_gauss': int(has_gauss), 'cached_gaussian': float(cached)},
            'loss_generator': generator.get_state()}


def set_rng_state(state, generator):
    torch.set_rng_state(state['torch'])
    if state['cuda'] and torch.cuda.is_available() and len(state['cuda']) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state['cuda'])
    npy = state['numpy']
    np.random.set_state((npy['kind'], npy['keys'].numpy().astype(np.uint32), npy['pos'],
                         npy['has_gauss'], npy['cached_gaussian']))
    try:
        generator.set_state(state['loss_generator'])
    except RuntimeError:  # saved on another device type (CPU <-> CUDA generators differ): not exact anyway
        print('note: the checkpoint\'s easy-negative RNG state is of another device; drawing from a new seed')
        generator.manual_seed(int(torch.randint(2 ** 62, (1,)).item()))


def host_copy(tree):
    """A copy of every tensor of a state tree in host memory: a snapshot later steps cannot change."""
    return tree_map(lambda t: t.detach().to('cpu', copy=True), tree)


def keep_log_lines(log_path, last_epoch):
    """On resume, drop the log lines of epochs after the checkpoint (they will be trained again)."""
    if not os.path.exists(log_path):
        return
    with open(log_path) as f:
        lines = f.readlines()
    kept = [line for line in lines
            if not (m := re.match(r'Epoch-(\d+) ', line)) or int(m.group(1)) <= last_epoch]
    if kept != lines:
        with fileio.atomic_open(log_path) as f:
            f.writelines(kept)


def log_line(epoch, losses):
    return (f'Epoch-{epoch} Train Loss: Total - {losses["total"]:.05f}, Classification - {losses["class"]:.05f}, '
            f'Localization - {losses["loc"]:.05f}, Confidence - {losses["conf"]:.05f}')


# -----------------------------------------------------------------------------
# one training step

class Step:
    """One optimisation step on a batch of window indices: forward (this rank's slice of the
    batch), matching and loss of the whole batch, backward, Adam. The epoch's loss sums stay
    on the device (`sums`, in TERMS order)."""

    def __init__(self, model, loss_fn, optimizer, tensors, cfg, rank=0, world=1):
        self.model, self.loss_fn, self.optimizer, self.cfg = model, loss_fn, optimizer, cfg
        self.tensors, self.rank, self.world = tensors, rank, world
        self.device = tensors['features'].device
        self.sums = torch.zeros(len(TERMS), device=self.device)

    def loss(self, idx, noise):
        """Loss of the batch `idx` (device tensor of window indices)."""
        n, world, t = len(idx), self.world, self.tensors
        local = idx
        if world > 1:  # contiguous slices, the short last one padded with repeats that gather drops
            per_rank = math.ceil(n / world)
            rows = torch.arange(self.rank * per_rank, (self.rank + 1) * per_rank, device=self.device)
            local = idx[rows.clamp_(max=n - 1)]
        x = t['features'].index_select(0, local).float()
        # no weight-cast cache: no weight is used twice, and a cache does not mix with CUDA graphs
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.cfg.bf16, cache_enabled=False):
            outputs = self.model(x)
        outputs = tree_map(lambda v: v.float(), outputs)  # matching and loss in fp32
        if world > 1:
            outputs = gather_batch(outputs, n)
        return self.loss_fn(outputs, t['gt_label'][idx], t['gt_box'][idx], t['gt_valid'][idx], self.cfg,
                            noise=noise)

    def run(self, idx, noise):
        """The step itself; gradients must be None (eager) or a CUDA graph's own buffers."""
        loss, terms = self.loss(idx, noise)
        loss.backward()
        self.optimizer.step()
        self.sums.add_(torch.stack([loss.detach(), terms['class'], terms['loc'], terms['conf']]))

    def __call__(self, idx, noise):
        self.optimizer.zero_grad(set_to_none=True)
        self.run(idx, noise)


class CudaGraphStep:
    """Full batches through one captured CUDA graph: WARM_STEPS eager steps on a side stream
    first (cuDNN autotuning, lazy state), then one capture, then replays; the same numbers
    as eager steps. The graph reads the batch from static buffers, refilled before each replay.
    If the capture fails, the steps run eagerly from then on."""

    def __init__(self, step, batch_size, log=print):
        self.step, self.log = step, log
        self.graph, self.warm_steps = None, 0
        self.static_idx = torch.zeros(batch_size, dtype=torch.int64, device=step.device)
        self.static_noise = None  # shaped like the first full batch's draws
        self.side = torch.cuda.Stream(step.device)

    def __call__(self, idx, noise):
        self.static_idx.copy_(idx)
        if self.static_noise is None:
            self.static_noise = noise.clone()
        else:
            self.static_noise.copy_(noise)
        if self.graph is None and self.warm_steps < WARM_STEPS:
            self.warm_up()
            return
        if self.graph is None:
            self.capture()
        if self.graph is False:
            self.step(self.static_idx, self.static_noise)
        else:
            self.graph.replay()

    def warm_up(self):
        current = torch.cuda.current_stream(self.step.device)
        self.side.wait_stream(current)
        with torch.cuda.stream(self.side):
            self.step(self.static_idx, self.static_noise)
        current.wait_stream(self.side)
        self.warm_steps += 1

    def capture(self):
        # Capture records the step without running it; gradients None so that the graph's
        # backward writes fresh ones into its own memory at every replay.
        self.step.optimizer.zero_grad(set_to_none=True)
        self.graph = torch.cuda.CUDAGraph()
        try:
            with torch.cuda.graph(self.graph):
                self.step.run(self.static_idx, self.static_noise)
        except RuntimeError as err:
            self.log(f'note: capturing the training step as a CUDA graph failed ({str(err).strip()[:200]}); '
                     f'training goes on without (--cuda_graph=false skips the attempt)')
            self.graph = False


# -----------------------------------------------------------------------------
# set-up: data, resume, optimiser

def training_tensors(cfg, data, device):
    """The training set on the device, once: a batch is then an index-select."""
    if data is None:
        data = load_data.load_train_data(cfg)
    if len(data['features']) == 0:
        raise ValueError(f'the training set is empty: no windows for split {cfg.train_split_set!r} '
                         f'({config.get_anno_path(cfg, cfg.train_split_set)}, '
                         f'{config.get_data_x_path(cfg, cfg.train_split_set)})')
    return {key: torch.as_tensor(data[key]).to(device) for key in ('features', 'gt_label', 'gt_box', 'gt_valid')}


def newest_readable_checkpoint(run_dir, cfg, feature_dim, class_list, log=print):
    """(checkpoint dict, path) of the newest checkpoint that reads and fits cfg, or (None, None).

    An unreadable one (a crash mid-write on another file system, a damaged disk) is skipped
    with a note, so the previous epoch's checkpoint takes over; one that reads but does not
    fit the run is an error, since an older one would not fit either.
    """
    found = checkpoints.list_checkpoints(run_dir)
    for _, path in reversed(found):
        try:
            ckpt = checkpoints.read_checkpoint(path)
        except ValueError as err:
            log(f'note: skipping {err}')
            continue
        try:
            checkpoints.check_checkpoint(ckpt, path, cfg, feature_dim,
                                         features=f'the data of {cfg.mode}/{cfg.pretrain}', class_list=class_list)
        except ValueError as err:
            raise ValueError(f'{err}; rerun with --fresh to start over') from None
        return ckpt, path
    if found:
        raise ValueError(f'no checkpoint in {run_dir} can be read; rerun with --fresh to start over')
    return None, None


def note_changed_settings(ckpt, path, cfg, log=print):
    saved = checkpoints.saved_settings(ckpt)
    changed = [k for k, v in cfg.to_dict().items() if k != 'learning_rates' and k in saved and saved[k] != v]
    if changed:
        log(f'note: resuming {path} with changed settings: ' +
            ', '.join(f'{k} {saved[k]!r} -> {getattr(cfg, k)!r}' for k in changed))


def start_outputs(cfg, ckpt, fresh):
    """Rank 0, holding the run folder's lock: clear what a fresh start replaces and what a killed
    run left behind, save the config, and cut the log back to the resumed epoch."""
    run_dir, log_path = config.get_models_dir(cfg), config.get_log_path(cfg)
    path = run_dir
    try:
        if fresh:
            for _, path in checkpoints.list_checkpoints(run_dir):
                os.remove(path)
        path = run_dir
        for name in fileio.remove_stale_temporaries(run_dir):
            print(f'note: removed {os.path.join(run_dir, name)}, left by a run that was killed while writing it')
        with fileio.atomic_open(os.path.join(run_dir, 'config.json')) as f:
            json.dump(cfg.to_dict(), f, indent=1)
        path = log_path
        os.makedirs(os.path.dirname(log_path) or '.', exist_ok=True)
        # logs/ is shared by every run: only this run's own leftovers go
        fileio.remove_stale_temporaries(os.path.dirname(log_path) or '.', os.path.basename(log_path))
        if ckpt:
            keep_log_lines(log_path, ckpt['epoch'])
        else:
            with fileio.atomic_open(log_path):
                pass
    except OSError as err:
        raise ValueError(f'cannot prepare {path}: {fileio.describe(err)}') from None


def make_optimizer(model, cfg, ckpt, use_graph, device):
    """Adam as released. fused: one pass over the parameters per step, several times faster
    than the default on CPU too. For a CUDA graph the learning rate is a device tensor,
    changed in place between epochs, and the state is capturable."""
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.learning_rates[0], betas=(0.9, 0.999),
                                 eps=1e-8, fused=True, capturable=use_graph)
    if ckpt:
        optimizer.load_state_dict(ckpt['optimizer'])
    for group in optimizer.param_groups:  # whatever the checkpoint's run used
        group['capturable'] = use_graph
        group['lr'] = torch.tensor(float(group['lr']), device=device) if use_graph else float(group['lr'])
    optimizer._warned_capturable_if_run_uncaptured = True  # a graph's odd-sized last batch runs eagerly
    return optimizer


def set_learning_rate(optimizer, lr):
    for group in optimizer.param_groups:
        if torch.is_tensor(group['lr']):
            group['lr'].fill_(lr)  # the tensor a CUDA graph reads
        else:
            group['lr'] = lr


# -----------------------------------------------------------------------------
# epochs

def run_epoch(cfg, epoch, step, graph_step, generator, num_windows, bar):
    """One pass over the epoch's batches -> ({term: mean loss}, windows seen)."""
    device = step.device
    batches = load_data.epoch_batches(num_windows, cfg, epoch)
    bounds = np.cumsum([0] + [len(b) for b in batches]).tolist()
    order = torch.as_tensor(np.concatenate(batches), dtype=torch.int64).to(device)
    step.sums.zero_()
    step.model.train()
    for i in range(len(batches)):
        idx = order[bounds[i]:bounds[i + 1]]
        noise = operations.loss_noise(cfg, len(idx), generator, device)
        if graph_step is not None and len(idx) == cfg.batch_size:
            graph_step(idx, noise)
        else:
            step(idx, noise)
        bar.update(len(idx))
        if (i + 1) % POSTFIX_EVERY == 0 and not bar.disable:
            bar.set_postfix(dict(zip(TERMS, [f'{v:.4f}' for v in (step.sums / (i + 1)).tolist()])), refresh=False)
    means = (step.sums / len(batches)).tolist()  # the one host-device sync of the epoch
    bar.set_postfix(dict(zip(TERMS, [f'{v:.4f}' for v in means])), refresh=False)
    return dict(zip(TERMS, means)), bounds[-1]


class CheckpointWriter:
    """A full-width checkpoint with its Adam state is about 1 GB, seconds of disk time: it is
    written by a thread from a host snapshot while the next epoch trains, one at a time. A
    failed write raises at the next write or at close()."""

    def __init__(self):
        self.pool, self.pending = ThreadPoolExecutor(max_workers=1), None

    def write(self, path, state, keep):
        self.wait()
        self.pending = self.pool.submit(checkpoints.write_checkpoint, path, host_copy(state), keep)

    def wait(self):
        if self.pending:
            pending, self.pending = self.pending, None
            pending.result()

    def close(self):
        try:
            self.wait()
        finally:
            self.pool.shutdown()


def end_epoch(cfg, epoch, losses, state, writer, log_path):
    """Rank 0 after each epoch: the checkpoint (every checkpoint_every epochs and the last; none
    without save_checkpoints), the log line. Returns (the checkpoint's path or None, the line)."""
    every = max(1, cfg.checkpoint_every)
    path = checkpoints.checkpoint_path(config.get_models_dir(cfg), epoch) if cfg.save_checkpoints else None
    if path and ((epoch + 1) % every == 0 or epoch + 1 == cfg.training_epochs):
        writer.write(path, state(), cfg.keep_checkpoints)
    line = log_line(epoch, losses)
    try:
        with open(log_path, 'a') as f:
            f.write(line + '\n')
    except OSError as err:
        raise ValueError(f'cannot write the log {log_path}: {err.strerror or err}') from None
    return path, line


# -----------------------------------------------------------------------------
# training

def train(cfg, fresh=False, data=None, progress=True):
    """Train (or resume) the run named by cfg; returns
    {'losses': {total, class, loc, conf} of the last epoch, 'model_path' (None when
    cfg.save_checkpoints is off), 'epoch', 'windows_per_s'}.

    data: optional dict as load_data.load_train_data returns (features [W,128,D], gt_label,
    gt_box, gt_valid); read from cfg's paths when None. Raises ValueError on bad data or a
    checkpoint that does not fit, and when another process trains the same run.
    """
    config.check_config(cfg)
    class_list = load_data.class_list(cfg)
    cfg = config.with_classes(cfg, class_list)   # num_classes: background + the data's classes
    device, rank, world, started = setup_device(cfg)
    try:
        if rank != 0:
            return _train(cfg, fresh, data, progress, device, rank, world, class_list)
        # A read-only or missing models/ or logs/ fails now, not after the first epoch.
        run_dir = config.get_models_dir(cfg)
        for path in (os.path.join(run_dir, 'config.json'), checkpoints.checkpoint_path(run_dir, 0),
                     config.get_log_path(cfg)):
            fileio.check_writable(path)
        # One training per run folder: a second one is refused instead of mixing two runs.
        with fileio.folder_lock(config.get_models_dir(cfg), 'training run'):
            return _train(cfg, fresh, data, progress, device, rank, world, class_list)
    finally:
        if started:
            dist.destroy_process_group()


def _train(cfg, fresh, data, progress, device, rank, world, class_list):
    master = rank == 0
    log = print if master and progress else (lambda *a: None)
    t_start = time.time()
    tensors = training_tensors(cfg, data, device)
    num_windows, feature_dim = tensors['features'].shape[0], int(tensors['features'].shape[2])
    log(f'{cfg.run_name}: {num_windows} training windows ({feature_dim}-d features) on {device} '
        f'in {time.time() - t_start:.1f} s')

    ckpt, ckpt_path = (None, None) if fresh else newest_readable_checkpoint(
        config.get_models_dir(cfg), cfg, feature_dim, class_list, print if master else log)
    if ckpt and ckpt['epoch'] + 1 >= cfg.training_epochs:
        if master:
            print(f'{cfg.run_name}: training is complete ({ckpt["epoch"] + 1} epochs, {cfg.training_epochs} '
                  f'asked); newest checkpoint {ckpt_path}. --fresh trains again.')
        return {'losses': ckpt.get('losses'), 'model_path': ckpt_path, 'epoch': ckpt['epoch'], 'windows_per_s': None}
    if ckpt and master:
        note_changed_settings(ckpt, ckpt_path, cfg)
    if master:
        start_outputs(cfg, ckpt, fresh)
    if world > 1:
        dist.barrier()  # rank 0 has cleared old checkpoints before anyone writes

    torch.manual_seed(cfg.seed)
    np.random.seed(cfg.seed)
    generator = torch.Generator(device=device).manual_seed(cfg.seed)  # easy-negative draws
    raw_model = checkpoints.build_model(cfg, feature_dim).to(device)
    # A CUDA graph replays the whole step (forward, loss, backward, Adam) as one launch: an
    # eager step is bound by the host issuing about a thousand small kernels, not by the GPU.
    use_graph = cfg.cuda_graph and device.type == 'cuda' and world == 1 and not cfg.compile
    if ckpt:
        checkpoints.load_state(raw_model, ckpt['model'], ckpt_path)  # names a NaN or misshapen parameter
    optimizer = make_optimizer(raw_model, cfg, ckpt, use_graph, device)
    if ckpt:
        set_rng_state(ckpt['rng'], generator)
        if master:
            print(f'{cfg.run_name}: resuming after epoch {ckpt["epoch"]} from {ckpt_path}')
    model = raw_model
    if world > 1:
        model = DistributedDataParallel(model, device_ids=[device.index] if device.type == 'cuda' else None)
    loss_fn = operations.compute_loss
    if cfg.compile:  # the loss too: matching and mining are many small kernels that fusion makes few
        model, loss_fn = torch.compile(model), torch.compile(loss_fn)
    step = Step(model, loss_fn, optimizer, tensors, cfg, rank, world)
    graph_step = CudaGraphStep(step, cfg.batch_size, print if master else log) if use_graph else None
    return run_epochs(cfg, step, graph_step, generator, raw_model, feature_dim, class_list,
                      ckpt['epoch'] + 1 if ckpt else 0, master, progress, world, t_start)


def run_epochs(cfg, step, graph_step, generator, raw_model, feature_dim, class_list, start_epoch, master, progress,
               world, t_start):
    """The epoch loop: learning rate, one pass, checks, checkpoint and log line."""
    log_path, writer = config.get_log_path(cfg), CheckpointWriter()
    result, seconds = None, []
    try:
        for epoch in range(start_epoch, cfg.training_epochs):
            set_learning_rate(step.optimizer, cfg.learning_rates[epoch])
            t0 = time.time()
            with tqdm(total=step.tensors['features'].shape[0], unit='win', dynamic_ncols=True, leave=False,
                      desc=f'{cfg.run_name} epoch {epoch}/{cfg.training_epochs - 1}',
                      disable=not (progress and master)) as bar:
                losses, seen = run_epoch(cfg, epoch, step, graph_step, generator, step.tensors['features'].shape[0],
                                         bar)
                speed = seen / (time.time() - t0)
            if not all(math.isfinite(v) for v in losses.values()):
                raise ValueError(f'{cfg.run_name}: loss is not finite in epoch {epoch}: {losses}')
            path = checkpoints.checkpoint_path(config.get_models_dir(cfg), epoch) if cfg.save_checkpoints else None
            if master:
                state = lambda: {  # noqa: E731 - built only for the epochs that write one
                    'model': raw_model.state_dict(), 'optimizer': step.optimizer.state_dict(), 'epoch': epoch,
                    'method': cfg.method, 'feature_dim': feature_dim, 'config': cfg.to_dict(),
                    'classes': classes.as_dict(class_list), 'losses': losses, 'rng': rng_state(generator)}
                path, line = end_epoch(cfg, epoch, losses, state, writer, log_path)
                if progress:
                    tqdm.write(f'{line} ({speed:.1f} windows/s)')
            seconds.append(time.time() - t0)
            result = {'losses': losses, 'model_path': path, 'epoch': epoch, 'windows_per_s': speed,
                      'epoch_seconds': seconds}
    finally:
        writer.close()
    if world > 1:
        dist.barrier()  # the last checkpoint is on disk before any rank returns
    if master and progress and result:
        print(f'{cfg.run_name}: epochs {start_epoch}-{result["epoch"]} trained in {time.time() - t_start:.1f} s')
    return result


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--mode', choices=config.MODES, default=None)
    parser.add_argument('--pretrain', default=None, help='feature set, e.g. UCF101 (D=1024) or KnetV3 (D=2048)')
    parser.add_argument('--method', choices=config.METHODS, default=None)
    parser.add_argument('--fresh', action='store_true', help='delete this run\'s checkpoints and start over')
    try:
        cfg, args = config.parse_config(parser)
        train(cfg, fresh=args.fresh)
    except ValueError as err:
        raise SystemExit(f'error: {err}') from None


if __name__ == '__main__':
    main()
