"""fig/visualize.py: which detections a timeline shows, the PNG, the CLI run from the repository root."""
import os
import subprocess
import sys

import matplotlib.image
import numpy as np
import pandas as pd
import pytest

import evaluate
import thumos14
from fig import visualize as V

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

CLASSES = [(7, 'BaseballPitch'), (9, 'BasketballDunk'), (26, 'Diving')]


@pytest.fixture
def gt_dir(tmp_path):
    d = tmp_path / 'gt'
    d.mkdir()
    (d / 'detclasslist.txt').write_text(''.join(f'{i} {n}\n' for i, n in CLASSES))
    (d / 'BaseballPitch_test.txt').write_text('video_test_0000001  1.0 3.0\nvideo_test_0000002  5.0 9.0\n')
    (d / 'BasketballDunk_test.txt').write_text('video_test_0000001  10.0 12.0\n')
    (d / 'Diving_test.txt').write_text('')
    (d / 'Ambiguous_test.txt').write_text('video_test_0000001  20.0 22.0\n')
    return d


@pytest.fixture
def result(tmp_path):
    rows = [('video_test_0000001', 1.1, 3.2, 7, 0.9), ('video_test_0000001', 9.0, 12.5, 9, 0.5),
            ('video_test_0000001', 14.0, 15.0, 26, 0.05), ('video_test_0000002', 5.0, 8.0, 7, 0.7),
            ('video_test_0000002', 0.0, 2.0, 9, 0.6), ('video_test_0000003', 0.0, 2.0, 9, 0.3)]
    path = tmp_path / 'result.txt'
    path.write_text(''.join('%s\t%.3f\t%.3f\t%d\t%.4f\n' % r for r in rows))
    return path


def test_panels_select_videos_scores_and_top(gt_dir, result):
    det = thumos14.read_results(str(result))
    gt = evaluate.read_ground_truth(str(gt_dir))
    panels = V.timeline_panels(det, gt, ['video_test_0000001'], min_score=0.1, top=0)
    video, d, g, amb, classes = panels[0]
    assert video == 'video_test_0000001'
    assert list(d['score']) == [0.9, 0.5]                    # 0.05 is below min_score
    assert sorted(g['class_id']) == [7, 9] and len(amb) == 1
    assert classes == [7, 9]
    _, d, _, _, classes = V.timeline_panels(det, gt, ['video_test_0000002'], top=1)[0]
    assert list(d['score']) == [0.7] and classes == [7]
    # Default: the videos with the most detections.
    shown = [p[0] for p in V.timeline_panels(det, gt, None, num_videos=2)]
    assert shown == ['video_test_0000001', 'video_test_0000002']
    with pytest.raises(ValueError, match='video_test_0000999 is neither'):
        V.timeline_panels(det, gt, ['video_test_0000999'])


def test_png_shows_class_colours(gt_dir, result, tmp_path):
    out = tmp_path / 'figs' / 'tl.png'
    assert V.plot_timeline(str(result), str(gt_dir), ['video_test_0000001', 'video_test_0000002'], str(out)) == str(out)
    img = matplotlib.image.imread(str(out))
    assert img.shape[0] > 300 and img.shape[1] == 1200
    rgb = img[..., :3].reshape(-1, 3)

    def has(class_id):
        return (np.abs(rgb - np.array(V.class_color(class_id)[:3])).max(1) < 0.02).any()
    assert has(7) and has(9)          # ground truth and the best detections in full colour
    assert not has(26)                # its only detection scores 0.05: drawn faint, never in full colour
    assert os.listdir(out.parent) == ['tl.png']


def test_dataframe_input_and_empty_video(gt_dir, tmp_path):
    det = pd.DataFrame(dict(video=['video_test_0000002'], start=[1.0], end=[2.0], class_id=[9], score=[0.4]))
    out = V.plot_timeline(det, str(gt_dir), ['video_test_0000001'], str(tmp_path / 'a.png'))
    assert os.path.getsize(out) > 1000  # ground truth only, no detections


def test_cli_from_repo_root(gt_dir, result, tmp_path):
    out = tmp_path / 'cli.png'
    run = subprocess.run([sys.executable, 'fig/visualize.py', str(result), '--gt', str(gt_dir), '--videos',
                          'video_test_0000002', '--out', str(out), '--min-score', '0.1', '--top', '5'],
                         cwd=REPO, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert out.read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'
    run = subprocess.run([sys.executable, 'fig/visualize.py', str(result), '--gt', str(gt_dir), '--videos', 'nope',
                          '--out', str(tmp_path / 'x.png')], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert run.returncode != 0 and 'video nope is neither' in run.stderr
    assert not (tmp_path / 'x.png').exists()


def test_timeline_without_ground_truth(tmp_path):
    # detect.py's own videos have no annotations: detections only, and a named video
    # without any detection still gets its (empty) panel.
    import pandas as pd
    from fig.visualize import plot_timeline
    det = pd.DataFrame(dict(video='clip', start=[1.0, 5.0], end=[3.0, 8.0], class_id=[7, 26], score=[0.9, 0.5]))
    out = plot_timeline(det, None, videos=['clip', 'silent_clip'], out=str(tmp_path / 't.png'), duration=15)
    assert (tmp_path / 't.png').stat().st_size > 5000 and out.endswith('t.png')
