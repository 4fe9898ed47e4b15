"""Plots of evaluation results are written as real PNG images."""
import subprocess
import sys

import matplotlib.image
import numpy as np
import pytest

import evaluate
from conftest import REPO
from fig import plot_eval


def check_png(path, min_width):
    assert path.read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'
    img = matplotlib.image.imread(path)
    assert img.shape[1] >= min_width
    assert img[..., :3].std() > 0.05  # not a blank canvas


def test_paper_rows_are_per_class():
    for label, (values, map50) in plot_eval.PAPER_AP50.items():
        assert len(values) == len(plot_eval.PAPER_CLASS_IDS) == 20
        assert abs(np.mean(values) - map50) < 1.0, label


def test_class_ap_and_pr_plots(shared, tmp_path):
    gt = shared / 'eval_annotation'
    res = evaluate.evaluate(shared / 'eval_vectors' / 'a_near_perfect.txt', gt, metrics=('kit', 'anet'),
                            return_pr=True)
    out = tmp_path / 'ap.png'
    plot_eval.plot_class_ap([('near', res['kit']), ('near anet', res['anet'])], out, 0.5, paper=True)
    check_png(out, 800)
    pr = tmp_path / 'pr.png'
    plot_eval.plot_pr_curves(res, pr, 4, title='a_near_perfect')
    check_png(pr, 800)
    with pytest.raises(ValueError, match='0.5 only'):
        plot_eval.plot_class_ap([('near', res['kit'])], out, 0.3, paper=True)
    with pytest.raises(ValueError, match='not evaluated'):
        plot_eval.plot_class_ap([('near', res['kit'])], out, 0.55)


def test_cli(shared, tmp_path):
    vec = shared / 'eval_vectors'
    out = tmp_path / 'ap.png'
    run = subprocess.run([sys.executable, 'fig/plot_eval.py', str(vec / 'c_ties.txt'), str(vec / 'd_ambiguous.txt'),
                          '--gt', str(shared / 'eval_annotation'), '--out', str(out), '--paper'],
                         cwd=REPO, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    check_png(out, 800)
