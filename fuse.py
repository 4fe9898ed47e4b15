"""Fuse the temporal and spatial streams' predictions (method.md §11) into one THUMOS14 result file.

    python fuse.py --pretrain UCF101 --method decouple_ssad [--key=value ...]
    python fuse.py --temporal CSV --spatial CSV --out TXT [--key=value ...]

The first form reads results/predict_temporal_<pretrain>_<method>.csv and
results/predict_spatial_<pretrain>_<method>.csv and writes
results/result_fuse_<pretrain>_<method>.txt. Both files must hold predictions of the
same windows in the same order, and the anchors of each window in the same order
(checked with their `anchor` column when both have one; without it a warning says the
order cannot be verified); otherwise the first row that differs is named.
conf, xmin, xmax and every score_k become w * temporal + (1 - w) * spatial
(w = fuse_temporal_weight, 2/3); rows with fused score_0 >= filter_neg_threshold_fuse
are dropped, then the post-processing of test.py applies (its filters included, as released).
"""
import argparse
import dataclasses
import os
import warnings

import config as C
import postprocess
import thumos14
from fileio import check_writable


def stream_predict_path(cfg, mode):
    return C.get_predict_result_path(dataclasses.replace(cfg, mode=mode))


def fuse(cfg, temporal=None, spatial=None, out=None):
    """Fuse two predictions CSVs (default: the run's) into a result file -> (its path, the detections)."""
    temporal = temporal or stream_predict_path(cfg, 'temporal')
    spatial = spatial or stream_predict_path(cfg, 'spatial')
    out = out or C.get_fuse_result_path(cfg)
    for path, mode in ((temporal, 'temporal'), (spatial, 'spatial')):
        if not os.path.isfile(path):
            raise ValueError(f'{mode}-stream predictions {path} not found; run python test.py --mode {mode} '
                             f'--pretrain {cfg.pretrain} --method {cfg.method} first, or give --{mode} CSV')
    if os.path.abspath(temporal) == os.path.abspath(spatial):
        raise ValueError(f'--temporal and --spatial are the same file {temporal}')
    check_writable(out)
    fps_of = thumos14.video_fps(cfg.fps_file)
    return out, postprocess.fuse_files(temporal, spatial, out, cfg, fps_of)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument('--pretrain', default=None, help='feature set name, e.g. UCF101 | KnetV3')
    parser.add_argument('--method', default=None, help='main_stream | decouple_ssad')
    parser.add_argument('--temporal', default=None, help='temporal-stream predictions CSV')
    parser.add_argument('--spatial', default=None, help='spatial-stream predictions CSV')
    parser.add_argument('--out', default=None, help='result file (default results/result_fuse_<pretrain>_<method>.txt)')
    warnings.formatwarning = thumos14.format_warning
    try:
        cfg, args = C.parse_config(parser, argv)
        out, det = fuse(cfg, args.temporal, args.spatial, args.out)
    except ValueError as err:
        raise SystemExit(f'error: {err}') from None
    print(f'wrote {out} ({len(det):,} detections, temporal weight {cfg.fuse_temporal_weight:.4g})')


if __name__ == '__main__':
    main()
