"""On a GPU (skipped without one): the CUDA-graph training step, the speed switches and
inference compute what the eager, CPU-tested code computes."""
import numpy as np
import pytest
import torch

import checkpoints
from conftest import TINY_RUN
import operations
import test as test_script
import train
from test_train import assert_same_tensors, load, log_lines, make_data

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason='needs a CUDA GPU')
LRS = (1e-3,) * 3
GPU_RUN = dict(TINY_RUN, method='decouple_ssad', device='cuda', learning_rates=LRS)


def losses_in_log(cfg):
    return [float(line.split('Total - ')[1].split(',')[0]) for line in log_lines(cfg)]


@pytest.fixture(scope='module')
def data():
    # 10 windows in batches of 3: three full batches (graph) and a single window (eager) per epoch
    return make_data(num_windows=10)


@pytest.fixture(scope='module')
def graph_run(tmp_path_factory, data, make_config):
    cfg = make_config(GPU_RUN, root=tmp_path_factory.mktemp('graph'))
    return cfg, train.train(cfg, data=data, progress=False)


def test_graph_step_equals_eager_step(tmp_path, data, graph_run, make_config):
    """3 warm-up steps, a capture, replays and odd-sized eager steps: the eager run's numbers."""
    cfg, result = graph_run
    eager_cfg = make_config(GPU_RUN, root=tmp_path, cuda_graph=False)
    eager = train.train(eager_cfg, data=data, progress=False)
    np.testing.assert_allclose(losses_in_log(cfg), losses_in_log(eager_cfg), rtol=1e-5)
    a, b = load(result['model_path']), load(eager['model_path'])
    assert_same_tensors(a['model'], b['model'], exact=False)
    assert losses_in_log(cfg)[-1] < losses_in_log(cfg)[0]


def test_graph_run_resumes_to_the_same_weights(tmp_path, data, graph_run, make_config):
    cfg, result = graph_run
    train.train(make_config(GPU_RUN, root=tmp_path, learning_rates=LRS[:1]),
                data=data, progress=False)
    resumed = train.train(make_config(GPU_RUN, root=tmp_path),
                          data=data, progress=False)
    assert resumed['epoch'] == 2
    assert_same_tensors(load(result['model_path'])['model'], load(resumed['model_path'])['model'], exact=False)


@pytest.mark.parametrize('method', ['main_stream', 'decouple_ssad'])
def test_speed_switches_on_the_gpu(method, make_config):
    """channels_last and group_branches in float32 on cuDNN: the default network's outputs."""
    torch.manual_seed(0)
    x = torch.randn(4, 128, 64, device='cuda')
    outs = []
    for values in ({}, dict(channels_last=True, group_branches=True)):
        cfg = make_config(method=method, **values)
        operations.set_precision(cfg)
        with torch.no_grad():
            outs.append(checkpoints.build_model(cfg, 64).cuda()(x))
    for key in outs[0]:
        torch.testing.assert_close(outs[1][key], outs[0][key], rtol=1e-4, atol=1e-4)


def test_bf16_with_every_switch_trains(tmp_path, data, make_config):
    cfg = make_config(GPU_RUN, root=tmp_path, bf16=True, channels_last=True, group_branches=True)
    train.train(cfg, data=data, progress=False)
    losses = losses_in_log(cfg)
    assert all(np.isfinite(losses)) and losses[-1] < losses[0]


def test_gpu_inference_equals_cpu_inference(graph_run, data):
    cfg, result = graph_run
    starts, videos = np.arange(10) * 128, np.array(['video_test_0000001'] * 10)
    preds = []
    for device in ('cpu', 'cuda'):
        model, _ = checkpoints.load_model(result['model_path'], cfg, device, feature_dim=8)
        preds.append(test_script.predict_windows(model, data['features'], starts, videos, cfg, batch_size=4))
    cpu, gpu = preds
    assert list(cpu['video_name']) == list(gpu['video_name'])
    numeric = cpu.columns[1:]
    np.testing.assert_allclose(gpu[numeric].to_numpy(), cpu[numeric].to_numpy(), rtol=1e-4, atol=1e-4)
