"""Train the main-stream SSAD or Decouple-SSAD on one feature stream of THUMOS14.

    python train.py --mode temporal --pretrain UCF101 --method decouple_ssad
    python train.py ... --fresh                   # start over instead of resuming
    python train.py ... --learning_rates=1e-4,1e-5 --device=cpu   # any Config field
    torchrun --nproc_per_node=4 train.py ...      # several GPUs (gloo on CPU)

Writes one checkpoint per epoch, models/<run>/model-ep-<e>.pt (the newest
`keep_checkpoints` are kept) and models/<run>/config.json, and one loss line
per epoch to logs/<run>.log, where <run> = <mode>_<pretrain>_<method>.
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
    name = cfg.device
    if name == 'auto':
        name = 'cuda' if torch.cuda.is_available() else 'cpu'
    device = torch.device(name)
    if device.type == 'cuda' and not torch.cuda.is_available():
        raise SystemExit(f'error: --device={cfg.device} but CUDA is not available')
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


def save_checkpoint(path, keep, state):
    """Write atomically, then delete all but the newest `keep` checkpoints of the folder (0 keeps all)."""
    with fileio.atomic_path(path) as tmp:
        torch.save(state, tmp)
    if keep > 0:
        for _, old in operations.list_checkpoints(os.path.dirname(path))[:-keep]:
            os.remove(old)


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
# training

def train(cfg, fresh=False, data=None, progress=True):
    """Train (or resume) the run named by cfg; returns
    {'losses': {total, class, loc, conf} of the last epoch, 'model_path', 'epoch', 'windows_per_s'}.

    data: optional dict as load_data.load_train_data returns (features [W,128,D], gt_label,
    gt_box, gt_valid); read from cfg's paths when None.
    """
    device, rank, world, started = setup_device(cfg)
    try:
        return _train(cfg, fresh, data, progress, device, rank, world)
    finally:
        if started:
            dist.destroy_process_group()


def _train(cfg, fresh, data, progress, device, rank, world):
    master = rank == 0
    run_dir, log_path = config.get_models_dir(cfg), config.get_log_path(cfg)

    # ---- data: everything on the device once; a batch is an index-select ----
    t_start = time.time()
    if data is None:
        data = load_data.load_train_data(cfg)
    num_windows = len(data['features'])
    if num_windows == 0:
        raise SystemExit(f'error: the training set is empty: no windows for split {cfg.train_split_set!r} '
                         f'({config.get_anno_path(cfg, cfg.train_split_set)}, '
                         f'{config.get_data_x_path(cfg, cfg.train_split_set)})')
    feature_dim = int(data['features'].shape[2])
    features = torch.as_tensor(data['features']).to(device)
    gt_label = torch.as_tensor(data['gt_label']).to(device)
    gt_box = torch.as_tensor(data['gt_box']).to(device)
    gt_valid = torch.as_tensor(data['gt_valid']).to(device)
    if master and progress:
        print(f'{cfg.run_name}: {num_windows} training windows ({feature_dim}-d features) on {device} '
              f'in {time.time() - t_start:.1f} s')

    # ---- resume, or start over ----
    checkpoints = operations.list_checkpoints(run_dir)
    if fresh and master:
        for _, path in checkpoints:
            os.remove(path)
    ckpt = None
    if checkpoints and not fresh:
        path = checkpoints[-1][1]
        try:
            ckpt = operations.read_checkpoint(path)
        except ValueError as err:
            raise SystemExit(f'error: {err}\n  (rerun with --fresh to start over)') from None
        if ckpt.get('method') != cfg.method:
            raise SystemExit(f'error: checkpoint {path} holds method {ckpt.get("method")!r}, '
                             f'this run trains {cfg.method!r}; rerun with --fresh to start over')
        if ckpt.get('feature_dim') != feature_dim:
            raise SystemExit(f'error: checkpoint {path} was trained on features of dimension '
                             f'{ckpt.get("feature_dim")}, but the features of {cfg.mode}/{cfg.pretrain} have '
                             f'dimension {feature_dim}; rerun with --fresh to start over')
        saved = {k: tuple(v) if isinstance(v, list) else v for k, v in ckpt.get('config', {}).items()}
        changed = [k for k, v in cfg.to_dict().items() if k != 'learning_rates' and k in saved and saved[k] != v]
        if changed and master:
            print(f'note: resuming {path} with changed settings: ' +
                  ', '.join(f'{k} {saved[k]!r} -> {getattr(cfg, k)!r}' for k in changed))
        if ckpt['epoch'] + 1 >= cfg.training_epochs:
            if master:
                print(f'{cfg.run_name}: training is complete ({ckpt["epoch"] + 1} epochs, '
                      f'{cfg.training_epochs} asked); newest checkpoint {path}. --fresh trains again.')
            return {'losses': ckpt.get('losses'), 'model_path': path, 'epoch': ckpt['epoch'],
                    'windows_per_s': None}
    start_epoch = ckpt['epoch'] + 1 if ckpt else 0

    if master:
        os.makedirs(run_dir, exist_ok=True)
        with fileio.atomic_open(os.path.join(run_dir, 'config.json')) as f:
            json.dump(cfg.to_dict(), f, indent=1)
        os.makedirs(os.path.dirname(log_path) or '.', exist_ok=True)
        if ckpt:
            keep_log_lines(log_path, ckpt['epoch'])
        else:
            open(log_path, 'w').close()
    if world > 1:
        dist.barrier()  # rank 0 has cleared old checkpoints before anyone writes

    # ---- model, optimiser, RNGs ----
    torch.manual_seed(cfg.seed)
    np.random.seed(cfg.seed)
    generator = torch.Generator(device=device).manual_seed(cfg.seed)  # easy-negative draws
    raw_model = operations.build_model(cfg, feature_dim).to(device)
    # A CUDA graph replays the whole step (forward, loss, backward, Adam) as one launch: an
    # eager step is bound by the host issuing about a thousand small kernels, not by the GPU.
    use_graph = cfg.cuda_graph and device.type == 'cuda' and world == 1 and not cfg.compile
    # fused: one pass over the parameters per step, several times faster than the default on CPU too.
    # In a graph the learning rate is a device tensor, changed in place between epochs.
    optimizer = torch.optim.Adam(raw_model.parameters(), lr=cfg.learning_rates[0], betas=(0.9, 0.999),
                                 eps=1e-8, fused=True, capturable=use_graph)
    if ckpt:
        raw_model.load_state_dict(ckpt['model'])
        optimizer.load_state_dict(ckpt['optimizer'])
        set_rng_state(ckpt['rng'], generator)
        if master:
            print(f'{cfg.run_name}: resuming after epoch {ckpt["epoch"]} from {checkpoints[-1][1]}')
    for group in optimizer.param_groups:  # whatever the checkpoint's run used
        group['capturable'] = use_graph
        group['lr'] = torch.tensor(float(group['lr']), device=device) if use_graph else float(group['lr'])
    optimizer._warned_capturable_if_run_uncaptured = True  # a graph's odd-sized last batch runs eagerly
    model = raw_model
    if world > 1:
        model = DistributedDataParallel(model, device_ids=[device.index] if device.type == 'cuda' else None)
    loss_fn = operations.compute_loss
    if cfg.compile:
        # The loss too: matching and mining are many small kernels that fusion makes few.
        model, loss_fn = torch.compile(model), torch.compile(loss_fn)

    def forward_loss(idx, noise):
        """Loss of the batch `idx` (device tensor of window indices); this rank runs its slice of it."""
        n = len(idx)
        if world > 1:  # contiguous slices, the short last one padded with repeats that gather drops
            per_rank = math.ceil(n / world)
            local = idx[torch.arange(rank * per_rank, (rank + 1) * per_rank, device=device).clamp_(max=n - 1)]
        else:
            local = idx
        x = features.index_select(0, local).float()
        # no weight-cast cache: no weight is used twice, and a cache does not mix with CUDA graphs
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=cfg.bf16, cache_enabled=False):
            outputs = model(x)
        outputs = tree_map(lambda t: t.float(), outputs)  # matching and loss in fp32
        if world > 1:
            outputs = gather_batch(outputs, n)
        return loss_fn(outputs, gt_label[idx], gt_box[idx], gt_valid[idx], cfg, noise=noise)

    sums = torch.zeros(len(TERMS), device=device)  # the epoch's loss sums, added to on the device

    def train_step(idx, noise):
        """One optimisation step; gradients must be None (eager) or the graph's own buffers."""
        loss, terms = forward_loss(idx, noise)
        loss.backward()
        optimizer.step()
        sums.add_(torch.stack([loss.detach(), terms['class'], terms['loc'], terms['conf']]))

    graph, warm_steps = None, 0
    static_idx = torch.zeros(cfg.batch_size, dtype=torch.int64, device=device)
    static_noise = None  # shaped like the first full batch's draws
    side = torch.cuda.Stream(device) if use_graph else None

    def graph_step(idx, noise):
        """A full batch through the CUDA graph: a few eager steps on a side stream first (cuDNN
        autotuning, lazy state), then one capture, then replays. Same numbers as eager steps."""
        nonlocal graph, warm_steps, static_noise
        static_idx.copy_(idx)
        if static_noise is None:
            static_noise = noise.clone()
        else:
            static_noise.copy_(noise)
        if graph is None and warm_steps < WARM_STEPS:
            side.wait_stream(torch.cuda.current_stream(device))
            with torch.cuda.stream(side):
                optimizer.zero_grad(set_to_none=True)
                train_step(static_idx, static_noise)
            torch.cuda.current_stream(device).wait_stream(side)
            warm_steps += 1
            return
        if graph is None:
            # capture records the step without running it; gradients None so that the
            # graph's backward writes fresh ones into its own memory at every replay
            optimizer.zero_grad(set_to_none=True)
            graph = torch.cuda.CUDAGraph()
            try:
                with torch.cuda.graph(graph):
                    train_step(static_idx, static_noise)
            except RuntimeError as err:
                if master:
                    print(f'note: capturing the training step as a CUDA graph failed ({str(err).strip()[:200]}); '
                          f'training goes on without (--cuda_graph=false skips the attempt)')
                graph = False
        if graph is False:
            optimizer.zero_grad(set_to_none=True)
            train_step(static_idx, static_noise)
        else:
            graph.replay()

    # ---- epochs ----
    # A full-width checkpoint with its Adam state is about 1 GB, seconds of disk time: it is
    # written by a thread from a host snapshot while the next epoch trains, one at a time.
    writer, writing = ThreadPoolExecutor(max_workers=1), None
    result, seconds = None, []
    for epoch in range(start_epoch, cfg.training_epochs):
        for group in optimizer.param_groups:
            if use_graph:
                group['lr'].fill_(cfg.learning_rates[epoch])  # the tensor the graph reads
            else:
                group['lr'] = cfg.learning_rates[epoch]
        batches = load_data.epoch_batches(num_windows, cfg, epoch)
        bounds = np.cumsum([0] + [len(b) for b in batches]).tolist()
        order = torch.as_tensor(np.concatenate(batches), dtype=torch.int64).to(device)
        sums.zero_()
        model.train()
        t0 = time.time()
        bar = tqdm(total=bounds[-1], unit='win', desc=f'{cfg.run_name} epoch {epoch}/{cfg.training_epochs - 1}',
                   disable=not (progress and master), dynamic_ncols=True, leave=False)
        for step in range(len(batches)):
            idx = order[bounds[step]:bounds[step + 1]]
            noise = operations.loss_noise(cfg, len(idx), generator, device)
            if use_graph and len(idx) == cfg.batch_size:
                graph_step(idx, noise)
            else:
                optimizer.zero_grad(set_to_none=True)
                train_step(idx, noise)
            bar.update(len(idx))
            if (step + 1) % POSTFIX_EVERY == 0 and not bar.disable:
                bar.set_postfix(dict(zip(TERMS, [f'{v:.4f}' for v in (sums / (step + 1)).tolist()])),
                                refresh=False)
        means = (sums / len(batches)).tolist()  # the one host-device sync of the epoch
        losses = dict(zip(TERMS, means))
        speed = bounds[-1] / (time.time() - t0)
        bar.set_postfix(dict(zip(TERMS, [f'{v:.4f}' for v in means])), refresh=False)
        bar.close()
        if not all(math.isfinite(v) for v in means):
            raise SystemExit(f'error: {cfg.run_name}: loss is not finite in epoch {epoch}: {losses}')

        path = os.path.join(run_dir, f'model-ep-{epoch}.pt')
        if master:
            # Writing a large model takes a while: checkpoint_every > 1 skips some (never the last).
            every = max(1, cfg.checkpoint_every)
            if (epoch + 1) % every == 0 or epoch + 1 == cfg.training_epochs:
                state = host_copy({
                    'model': raw_model.state_dict(), 'optimizer': optimizer.state_dict(), 'epoch': epoch,
                    'method': cfg.method, 'feature_dim': feature_dim, 'config': cfg.to_dict(),
                    'losses': losses, 'rng': rng_state(generator)})
                if writing:
                    writing.result()  # the previous write is done (its error, if any, raised here)
                writing = writer.submit(save_checkpoint, path, cfg.keep_checkpoints, state)
            line = log_line(epoch, losses)
            with open(log_path, 'a') as f:
                f.write(line + '\n')
                f.flush()
            if progress:
                tqdm.write(f'{line} ({speed:.1f} windows/s)')
        seconds.append(time.time() - t0)
        result = {'losses': losses, 'model_path': path, 'epoch': epoch, 'windows_per_s': speed,
                  'epoch_seconds': seconds}
    if writing:
        writing.result()
    writer.shutdown()
    if world > 1:
        dist.barrier()  # the last checkpoint is on disk before any rank returns
    if master and progress and result:
        print(f'{cfg.run_name}: epochs {start_epoch}-{result["epoch"]} trained in {time.time() - t_start:.1f} s')
    return result


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--mode', choices=('temporal', 'spatial'), default=None)
    parser.add_argument('--pretrain', default=None, help='feature set, e.g. UCF101 (D=1024) or KnetV3 (D=2048)')
    parser.add_argument('--method', choices=('main_stream', 'decouple_ssad'), default=None)
    parser.add_argument('--fresh', action='store_true', help='delete this run\'s checkpoints and start over')
    cfg, args = config.parse_config(parser)
    train(cfg, fresh=args.fresh)


if __name__ == '__main__':
    main()
