"""The paper preset matches the paper where the paper is explicit; the demo keeps its calibrated choices."""

from dreampose.config import DropoutConfig, load_params
from dreampose.models.sizes import check_frame_size, size_multiple


def test_paper_preset_follows_the_paper(repo):
    paper = load_params(repo / "presets" / "paper.yaml")
    assert paper.train_subject.unet.dropout == DropoutConfig(pose=0, image=0, both=0)  # supp. 1: "no dropout"
    assert paper.train_base.dropout == DropoutConfig(pose=0.05, image=0.05, both=0.05)
    assert paper.score.fvd_clip_len == 16 and paper.score.table1_size == 256
    check_frame_size(paper.frames.height, paper.frames.width, size_multiple(4, 4, 2))  # SD v1.x: multiples of 64


def test_demo_preset_is_unchanged(repo):
    demo = load_params(repo / "params.yaml")
    assert demo.train_subject.unet.dropout == DropoutConfig(pose=0.05, image=0.05, both=0.05)
    assert demo.score.table1_size is None and demo.score.fvd_clip_len == 8
