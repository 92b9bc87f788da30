"""options.py (flags declared once, args.pkl read back), fixes.py and build_network's strictness."""

import argparse
import pickle

import pytest

import fixes
import net
import options
import training
from utils import InputError


def parse(task="ovssc", *argv):
    return options.finalize(
        options.training_parser(task).parse_args(["--file_path", "d", "--log", "l", *argv])
    )


def test_defaults_are_the_originals_and_true_flags_can_be_switched_off():
    args = parse()
    assert args.voxel_shape == [128, 128, 128]
    assert args.scene_bounds == [[-1.0, -1.0, -0.1], [1.0, 1.0, 1.9]]
    assert (args.lr, args.num_input_pts, args.num_output_pts, args.epochs) == (
        1e-3,
        80_000,
        400_000,
        200,
    )
    assert (
        args.domain_randomization and args.balance_spatial_sampling and args.decoder_concat_xyz_pts
    )
    assert not any(getattr(args, name) for name in fixes.names("network") + fixes.names("dataset"))
    off = parse(
        "ovssc",
        "--no_domain_randomization",
        "--no_balance_spatial_sampling",
        "--fix_scatter_reduce",
    )
    assert (
        not off.domain_randomization and not off.balance_spatial_sampling and off.fix_scatter_reduce
    )


def test_voxel_shape_and_scene_bounds_can_be_set():
    args = parse(
        "vool", "--voxel_shape", "32", "32", "16", "--scene_bounds", "-2", "-2", "0", "2", "2", "3"
    )
    assert args.voxel_shape == [32, 32, 16]
    assert args.scene_bounds == [[-2.0, -2.0, 0.0], [2.0, 2.0, 3.0]]
    with pytest.raises(SystemExit):
        parse("vool", "--scene_bounds", "1", "1", "1", "0", "0", "0")


def test_semantic_aware_reads_rgb_and_approaches_follow_the_task():
    assert parse("vool", "--approach", "semantic_aware").network_inputs == ["rgb"]
    parse("vool", "--approach", "clip_spatial")
    with pytest.raises(SystemExit):
        parse("ovssc", "--approach", "clip_spatial")


def test_args_pkl_round_trip_and_an_original_file_gets_defaults(tmp_path):
    args = parse("ovssc", "--unet_f_maps", "8")
    options.save_args(args, tmp_path)
    loaded = options.load_args(tmp_path / "args.pkl")
    assert vars(loaded) == vars(args)
    # An original-style file: list scene bounds as one flat list, no fix flags, no amp_dtype.
    original = argparse.Namespace(
        file_path="dataset/",
        approach="semantic_abstraction",
        unet_f_maps=16,
        scene_bounds=[[-1, -1, -0.1], [1, 1, 1.9]],
        voxel_shape=[128, 128, 128],
    )
    with open(tmp_path / "old.pkl", "wb") as f:
        pickle.dump(original, f)
    old = options.load_args(tmp_path / "old.pkl")
    assert old.fix_scatter_reduce is False and old.amp_dtype == "fp16" and old.num_descs == 4
    assert options.differences(old, loaded) == ["unet_f_maps: 16 -> 8"]


def test_load_args_errors_are_one_line(tmp_path):
    with pytest.raises(InputError, match="args.pkl"):
        options.load_args(tmp_path / "args.pkl")
    (tmp_path / "bad.pkl").write_bytes(b"garbage")
    with pytest.raises(InputError, match="not a readable args.pkl"):
        options.load_args(tmp_path / "bad.pkl")
    with open(tmp_path / "dict.pkl", "wb") as f:
        pickle.dump({"a": 1}, f)
    with pytest.raises(InputError, match="holds a dict"):
        options.load_args(tmp_path / "dict.pkl")


SMALL = dict(
    voxel_shape=(8, 8, 8),
    unet_f_maps=4,
    unet_num_channels=4,
    unet_num_groups=2,
    unet_num_levels=2,
    pts_feat_extractor_hidden_dim=8,
)


def test_build_network_picks_its_arguments_from_a_training_namespace():
    args = parse("vool", "--approach", "semantic_abstraction", "--pointing_dim", "8")
    vars(args).update(SMALL)
    network = net.build_network("vool", args.approach, args)
    assert network.completion_net.virtual_grid.grid_shape == (8, 8, 8)
    assert len(network.relation_embeddings["in"]) == 8


@pytest.mark.parametrize(
    "task,approach",
    [
        ("ovssc", "semantic_abstraction"),
        ("ovssc", "semantic_aware"),
        ("vool", "semantic_abstraction"),
        ("vool", "clip_spatial"),
    ],
)
def test_build_network_rejects_an_unknown_key_naming_it(task, approach):
    with pytest.raises(InputError, match="no argument 'unet_fmaps'") as error:
        net.build_network(task, approach, {**SMALL, "unet_fmaps": 4})
    assert "\n" not in str(error.value)
    with pytest.raises(InputError, match="no argument 'pointing_dimension'"):
        net.build_network(task, approach, SMALL, pointing_dimension=3)


def test_every_training_flag_a_network_uses_is_a_flag():
    flags = set(vars(options.defaults()))
    for approaches in net.NETWORKS.values():
        for cls in approaches.values():
            used = net.network_arguments(cls) - {"clip_hidden_dim", "text_encoder"}
            assert used <= flags, (cls.__name__, used - flags)


def test_fix_table_names_follow_one_scheme_and_the_readme_table_lists_them():
    assert all(f.name.startswith("fix_") for f in fixes.FIXES)
    table = fixes.markdown_table()
    assert all(f"`--{f.name}`" in table for f in fixes.FIXES)
    assert set(fixes.names("network")) <= net.network_arguments(net.SemAbs3D)


@pytest.mark.parametrize(
    "argv, line",
    [
        (
            ["--voxel_shape", "0", "0", "0"],
            "argument --voxel_shape: must be an integer >= 1, got 0",
        ),
        (["--batch_size", "0"], "argument --batch_size: must be an integer >= 1, got 0"),
        (
            ["--num_input_pts", "0"],
            "argument --num_input_pts: must be an integer >= 1, or -1 (every point), got 0",
        ),
        (
            ["--num_output_pts", "-5"],
            "argument --num_output_pts: must be an integer >= 1, or -1 (every point), got -5",
        ),
        (["--epochs", "-1"], "argument --epochs: must be an integer >= 1, got -1"),
        (["--lr", "nan"], "argument --lr: must be a finite number > 0, got nan"),
        (["--lr", "0"], "argument --lr: must be a finite number > 0, got 0"),
        (["--lr", "1e-3x"], "argument --lr: must be a finite number > 0, got 1e-3x"),
        (["--seed", "-1"], "argument --seed: must be an integer from 0 to 4294967295, got -1"),
        (["--seed", str(2**32)], f"from 0 to 4294967295, got {2**32}"),
        (["--num_workers", "-1"], "argument --num_workers: must be an integer >= 0, got -1"),
        (["--num_patches", "0"], "argument --num_patches: must be an integer >= 1, got 0"),
        (["--num_descs", "0"], "argument --num_descs: must be an integer >= 1, got 0"),
        (
            ["--weight_decay", "inf"],
            "argument --weight_decay: must be a finite number >= 0, got inf",
        ),
        (["--max_minutes", "0"], "argument --max_minutes: must be a finite number > 0, got 0"),
        (["--saliency_vmin", "nan"], "argument --saliency_vmin: must be a finite number, got nan"),
        (["--scene_bounds", "0", "0", "0", "inf", "1", "1"], "must be a finite number, got inf"),
        (["--save_freq", "-2"], "must be 0 (never) or a positive epoch count, got -2"),
    ],
)
def test_bad_numbers_stop_at_parsing_with_argparses_line(capsys, argv, line):
    with pytest.raises(SystemExit) as exit_:
        parse("ovssc", *argv)
    assert exit_.value.code == 2
    err = capsys.readouterr().err  # one line: the problem and where the flags are listed
    assert err.startswith("error: ") and err.count("\n") == 1, err
    assert err.endswith(f"{line} (python train_ovssc.py --help lists the flags)\n"), err


def test_edge_values_are_accepted():
    args = parse(
        "ovssc", "--seed", str(2**32 - 1), "--num_workers", "0", "--num_warmup_steps", "0",
        "--weight_decay", "0", "--saliency_vmin", "-0.5", "--epochs", "1",
    )  # fmt: skip
    assert (args.seed, args.num_workers, args.weight_decay, args.saliency_vmin) == (
        2**32 - 1, 0, 0.0, -0.5,
    )  # fmt: skip


def test_the_eval_parser_shares_the_rules(capsys):
    import eval as eval_script

    with pytest.raises(SystemExit):
        eval_script.parser().parse_args(
            ["--task", "ovssc", "--file_path", "d", "--batch_size", "0"]
        )
    assert "argument --batch_size: must be an integer >= 1, got 0" in capsys.readouterr().err


@pytest.mark.parametrize(
    "name, value, line",
    [
        ("lr", float("nan"), "lr must be a finite number > 0, got nan"),
        ("voxel_shape", [128, 0, 128], "voxel_shape must be an integer >= 1, got 0"),
        (
            "num_input_pts",
            2.5,
            "num_input_pts must be an integer >= 1, or -1 (every point), got 2.5",
        ),
        ("seed", "0", "seed must be an integer from 0 to 4294967295, got 0"),
        ("scene_bounds", [[-1, -1, 0], [1, 1, float("inf")]], "scene_bounds must be a finite"),
    ],
)
def test_load_args_holds_stored_values_to_the_same_rules(tmp_path, name, value, line):
    stored = parse("ovssc")
    setattr(stored, name, value)
    with open(tmp_path / "args.pkl", "wb") as f:
        pickle.dump(stored, f)
    with pytest.raises(InputError) as error:
        options.load_args(tmp_path / "args.pkl")
    assert str(error.value).startswith(f"{tmp_path / 'args.pkl'}: {line}")


@pytest.mark.parametrize(
    "task, approach, refused",
    [
        ("vool", "semantic_abstraction", False),
        ("vool", "clip_spatial", True),
        ("vool", "semantic_aware", True),
        ("ovssc", "semantic_abstraction", True),
    ],
)
def test_relation_offsets_are_only_for_semantic_abstraction_vool(task, approach, refused):
    argv = ["--file_path", "x", "--log", "y", "--approach", approach, "--relation_offsets"]
    if refused:
        with pytest.raises(InputError, match="--relation_offsets is an option of VOOL's"):
            training.prepare_args(task, argv)
    else:
        assert training.prepare_args(task, argv).relation_offsets is True
