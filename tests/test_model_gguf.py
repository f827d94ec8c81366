"""`python -m shuangyu.modeling.export --to gguf SRC OUT.gguf`: metadata, tensors and token ids read back through
the `gguf` package (the one llama.cpp maintains), refusals, and (slow, once `make install-llama-cpp` has
built llama-cpp-python; CI does) llama.cpp itself running the file."""

import json
import subprocess
import sys

import pytest
import torch
from test_model_support import EOS_ID, PAD_ID, REPO, VOCAB_SIZE, corpus_lines, model_folder

from shuangyu.modeling.export import CHECK_TEXT, gguf_field, interleave_rotary_rows, main, tokenizer_from_gguf
from shuangyu.modeling.modeling_shuangyu import ShuangyuRotaryEmbedding
from shuangyu.tokenizer.chat_template import CHAT_SAMPLING, add_template_to_folder, encode_chat, stop_token_ids

gguf = pytest.importorskip("gguf")
IM_END_ID = 3  # the test tokenizer's <|im_end|> (tests/test_model_support.py)


def run_main(argv) -> int:
    try:
        return main(argv)
    except SystemExit as exit_:  # argparse's refusals
        return exit_.code


def export(src, out, *flags) -> int:
    return run_main(["--to", "gguf", *flags, str(src), str(out)])


def read(path):
    reader = gguf.GGUFReader(str(path))
    return reader, {t.name: t for t in reader.tensors}


def tensor_as_torch(t) -> torch.Tensor:
    # GGUF lists dimensions fastest-first; numpy's data is already in row-major order of the torch shape.
    return torch.from_numpy(gguf.quants.dequantize(t.data, t.tensor_type).copy()).float()


EDGE_STRINGS = [
    "",
    " ",
    "\n\n\n",
    "   leading and trailing   ",
    "2024年3月15日 12:30:45.678",
    "iPhone15手机壳，USB-C接口",
    "don't, won't, y'all'd've, IT'S",
    "😀😃😄 👨‍👩‍👧 🇨🇳",
    "full-width：ＡＢＣ１２３！？",
    "tabs\tand\r\nwindows newlines",
    "def f(x):\n\treturn x ** 2  # 平方\n",
    "<|endoftext|> is plain text here",
]


@pytest.fixture
def exported(tmp_path):
    src, model = model_folder(tmp_path / "src", rope_theta=50000.0)
    out = tmp_path / "model.gguf"
    assert export(src, out) == 0
    return src, model, out


def test_gguf_metadata_is_llama_with_a_qwen2_bpe_tokenizer(exported):
    src, model, out = exported
    config = model.config
    reader, _ = read(out)
    expected = {
        "general.architecture": "llama",
        "llama.block_count": config.num_hidden_layers,
        "llama.context_length": config.max_position_embeddings,
        "llama.embedding_length": config.hidden_size,
        "llama.feed_forward_length": config.intermediate_size,
        "llama.attention.head_count": config.num_attention_heads,
        "llama.attention.head_count_kv": config.num_key_value_heads,
        "llama.rope.dimension_count": config.head_dim,
        "llama.vocab_size": VOCAB_SIZE,
        "general.file_type": 0,  # all f32, as the source
        "tokenizer.ggml.model": "gpt2",
        "tokenizer.ggml.pre": "qwen2",
        "tokenizer.ggml.bos_token_id": EOS_ID,
        "tokenizer.ggml.eos_token_id": EOS_ID,
        "tokenizer.ggml.padding_token_id": PAD_ID,
        "tokenizer.ggml.add_bos_token": False,
        "tokenizer.ggml.add_eos_token": False,
    }
    assert {key: gguf_field(reader, key) for key in expected} == expected
    assert gguf_field(reader, "llama.rope.freq_base") == pytest.approx(50000.0)
    assert gguf_field(reader, "llama.attention.layer_norm_rms_epsilon") == pytest.approx(config.norm_eps)
    assert gguf_field(reader, "llama.rope.scaling.type") is None
    assert sorted(p.name for p in out.parent.iterdir()) == ["model.gguf", "src"]  # no temporary file left

    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(src)
    tokens = gguf_field(reader, "tokenizer.ggml.tokens")
    types = gguf_field(reader, "tokenizer.ggml.token_type")
    assert len(tokens) == len(types) == VOCAB_SIZE
    assert tokens[: len(tok)] == tok.convert_ids_to_tokens(list(range(len(tok))))
    assert types[:4] == [3, 3, 3, 3]  # the special tokens are control tokens
    assert set(types[4 : len(tok)]) == {1} and set(types[len(tok) :]) == {5}  # normal, then unused padding rows
    merges = json.loads((src / "tokenizer.json").read_text())["model"]["merges"]
    assert gguf_field(reader, "tokenizer.ggml.merges") == [" ".join(m) for m in merges]
    assert len(merges) == len(tok) - 256 - 4  # one merge per learned token


def test_gguf_name_is_the_models_not_its_folders(tmp_path):
    from shuangyu.sharing.card import write_card

    def name(src):
        assert export(src, tmp_path / "model.gguf", "--overwrite") == 0
        return gguf_field(read(tmp_path / "model.gguf")[0], "general.name")

    final, _ = model_folder(tmp_path / "zh-en-run" / "final")
    assert name(final) == "zh-en-run"  # a run's final/ folder: the run's name
    checkpoint, _ = model_folder(tmp_path / "zh-en-run" / "checkpoints" / "step-24" / "model")
    assert name(checkpoint) == "zh-en-run-step-24"
    assert name(model_folder(tmp_path / "dpo-run" / "checkpoint-6")[0]) == "dpo-run-checkpoint-6"  # the Trainer's
    write_card(final, name="bilingual-tiny")  # the title train_clm.py, DPO and merge_lora give the card
    assert name(final) == "bilingual-tiny"
    assert name(model_folder(tmp_path / "my-model")[0]) == "my-model"


def test_gguf_tensors_are_the_weights_with_rotary_rows_interleaved(exported):
    _, model, out = exported
    _, tensors = read(out)
    layers = model.config.num_hidden_layers
    per_block = ["attn_norm", "attn_q", "attn_k", "attn_v", "attn_output", "ffn_norm", "ffn_gate", "ffn_up", "ffn_down"]
    expected = {"token_embd.weight", "output_norm.weight"}
    expected |= {f"blk.{i}.{n}.weight" for i in range(layers) for n in per_block}
    assert set(tensors) == expected  # tied: no output.weight, llama.cpp reuses token_embd
    state = model.state_dict()
    heads, kv_heads = model.config.num_attention_heads, model.config.num_key_value_heads
    torch.testing.assert_close(
        tensor_as_torch(tensors["token_embd.weight"]), state["model.embed_tokens.weight"], rtol=0, atol=0
    )
    q = tensor_as_torch(tensors["blk.1.attn_q.weight"])
    k = tensor_as_torch(tensors["blk.1.attn_k.weight"])
    torch.testing.assert_close(q, interleave_rotary_rows(state["model.layers.1.self_attn.q_proj.weight"], heads))
    torch.testing.assert_close(k, interleave_rotary_rows(state["model.layers.1.self_attn.k_proj.weight"], kv_heads))
    # Interleaving pairs row j of each head's first half with row j of its second half.
    d = model.config.head_dim
    torch.testing.assert_close(k[1], state["model.layers.1.self_attn.k_proj.weight"][d // 2])
    torch.testing.assert_close(
        tensor_as_torch(tensors["blk.0.ffn_down.weight"]), state["model.layers.0.mlp.down_proj.weight"], rtol=0, atol=0
    )


def test_gguf_tokenizer_gives_our_ids_on_corpus_and_edge_text(exported):
    from transformers import AutoTokenizer

    src, _, out = exported
    ours = AutoTokenizer.from_pretrained(src)
    theirs = tokenizer_from_gguf(out)
    texts = [CHECK_TEXT, *EDGE_STRINGS]
    for name in ("zh/news_xinwenlianbo", "zh/tech_weekly_ruanyf", "zh/reviews", "en/bbc_news", "en/imdb_reviews"):
        texts += corpus_lines(name, 40, "_val")
    checked = 0
    for text in texts:
        expected = ours(text, add_special_tokens=False).input_ids
        assert theirs.encode(text, add_special_tokens=False).ids == expected, text[:80]
        checked += len(expected)
    assert checked > 20_000


def test_gguf_from_a_tokenizer_json_alone(tmp_path):
    src, _ = model_folder(tmp_path / "src")
    (src / "tokenizer_config.json").unlink()  # special ids then come from the model's config
    out = tmp_path / "model.gguf"
    assert export(src, out) == 0
    reader, _ = read(out)
    assert gguf_field(reader, "tokenizer.ggml.eos_token_id") == EOS_ID
    assert gguf_field(reader, "tokenizer.ggml.padding_token_id") == PAD_ID


def instruction_tuned_folder(src):
    """What SFT leaves in a model folder: the chat template, and a generation config that stops at <|im_end|>."""
    from transformers import AutoTokenizer, GenerationConfig

    add_template_to_folder(src)
    stops = stop_token_ids(AutoTokenizer.from_pretrained(src))
    generation = GenerationConfig(bos_token_id=EOS_ID, eos_token_id=stops, pad_token_id=PAD_ID, **CHAT_SAMPLING)
    generation.save_pretrained(src)
    return stops


def test_an_instruction_tuned_gguf_names_its_end_of_turn_token_and_template(tmp_path):
    src, _ = model_folder(tmp_path / "src")
    base = tmp_path / "base.gguf"
    assert export(src, base) == 0
    reader, _ = read(base)
    assert gguf_field(reader, "tokenizer.ggml.eot_token_id") is None and "tokenizer.chat_template" not in reader.fields
    assert not [name for name in reader.fields if name.startswith("general.sampling.")]  # greedy: llama.cpp's own
    assert instruction_tuned_folder(src) == [EOS_ID, IM_END_ID]
    chat = tmp_path / "chat.gguf"
    assert export(src, chat) == 0
    reader, _ = read(chat)
    assert gguf_field(reader, "tokenizer.ggml.eos_token_id") == EOS_ID
    assert gguf_field(reader, "tokenizer.ggml.eot_token_id") == IM_END_ID
    assert gguf_field(reader, "tokenizer.chat_template") == (src / "chat_template.jinja").read_text(encoding="utf-8")
    # the chat model's sampling (generation_config.json) for llama-cli and llama-server, as llama.cpp's converter does
    sampling = {key: gguf_field(reader, f"general.sampling.{key}") for key in ("temp", "top_p", "top_k")}
    expected = {"temp": CHAT_SAMPLING["temperature"], "top_p": CHAT_SAMPLING["top_p"], "top_k": CHAT_SAMPLING["top_k"]}
    assert sampling == pytest.approx(expected)


def test_gguf_untied_head_biases_gqa_and_f16(tmp_path):
    src, model = model_folder(tmp_path / "src", tie_word_embeddings=False, attention_bias=True, mlp_bias=True)
    out = tmp_path / "model.gguf"
    assert export(src, out, "--dtype", "f16") == 0
    reader, tensors = read(out)
    assert gguf_field(reader, "general.file_type") == 1
    assert tensors["output.weight"].tensor_type == gguf.GGMLQuantizationType.F16
    assert tensors["blk.0.attn_norm.weight"].tensor_type == gguf.GGMLQuantizationType.F32  # 1-D stays f32
    state = model.state_dict()
    torch.testing.assert_close(tensor_as_torch(tensors["output.weight"]), state["lm_head.weight"], rtol=1e-3, atol=1e-4)
    bias = tensor_as_torch(tensors["blk.0.attn_k.bias"])
    expected = interleave_rotary_rows(state["model.layers.0.self_attn.k_proj.bias"], model.config.num_key_value_heads)
    torch.testing.assert_close(bias, expected, rtol=0, atol=0)
    assert {"blk.1.ffn_up.bias", "blk.1.attn_output.bias", "blk.1.attn_q.bias"} <= set(tensors)


@pytest.mark.parametrize(
    "rope_parameters, fields",
    [
        ({"rope_type": "linear", "factor": 2.0}, {"type": "linear", "factor": 2.0}),
        (
            {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 64},
            {"type": "yarn", "factor": 4.0, "original_context_length": 64},
        ),
    ],
    ids=["linear", "yarn"],
)
def test_gguf_rope_scaling_keys(tmp_path, rope_parameters, fields):
    src, _ = model_folder(tmp_path / "src", max_position_embeddings=256, rope_parameters=rope_parameters)
    out = tmp_path / "model.gguf"
    assert export(src, out) == 0
    reader, _ = read(out)
    got = {name: gguf_field(reader, f"llama.rope.scaling.{name}") for name in fields}
    assert got == fields
    assert gguf_field(reader, "llama.context_length") == 256


def test_gguf_llama3_rope_travels_as_frequency_factors(tmp_path):
    params = {
        "rope_type": "llama3",
        "factor": 8.0,
        "low_freq_factor": 1.0,
        "high_freq_factor": 4.0,
        "original_max_position_embeddings": 32,
    }
    src, model = model_folder(tmp_path / "src", max_position_embeddings=256, rope_parameters=params)
    out = tmp_path / "model.gguf"
    assert export(src, out) == 0
    _, tensors = read(out)
    factors = tensor_as_torch(tensors["rope_freqs.weight"])
    plain, _ = ShuangyuRotaryEmbedding.compute_default_rope_parameters(model.config)
    # llama.cpp divides each plain frequency by its factor: that must give the model's frequencies.
    torch.testing.assert_close(plain / factors, model.model.rotary_emb.inv_freq, rtol=1e-6, atol=0)
    assert factors[0] == 1.0 and factors[-1] == 8.0  # high frequencies kept, low ones scaled by the factor


def refusal(capsys, argv) -> str:
    """Run the command; it must exit with status 2 and print exactly one line to stderr, returned."""
    capsys.readouterr()  # what the test's own setup printed
    assert run_main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    return err[0]


def test_gguf_refuses_a_tokenizer_llama_cpp_would_split_differently(tmp_path, capsys):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    # GPT-2's pre-tokenizer keeps digit runs together, so merges like "20" exist; qwen2 splits digits apart.
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=600,
        special_tokens=["<|endoftext|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(corpus_lines("zh/news_xinwenlianbo", 60) + ["2024 2023 2025 1999 2000"] * 50, trainer)
    src, _ = model_folder(tmp_path / "src", vocab_size=640)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (src / name).unlink()
    PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>").save_pretrained(src)
    line = refusal(capsys, ["--to", "gguf", str(src), str(tmp_path / "model.gguf")])
    assert "tokenizer.json" in line and "qwen2" in line and "--to llama" in line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src"]  # nothing written, no temporary file


def test_gguf_refuses_dynamic_rope(tmp_path, capsys):
    src, _ = model_folder(tmp_path / "src", rope_parameters={"rope_type": "dynamic", "factor": 2.0})
    line = refusal(capsys, ["--to", "gguf", str(src), str(tmp_path / "model.gguf")])
    assert "config.json" in line and "'dynamic'" in line and "linear" in line and "yarn" in line
    assert not (tmp_path / "model.gguf").exists()


@pytest.mark.parametrize(
    "case, expected",
    [
        ("missing_src", "not a folder"),
        ("no_tokenizer", "tokenizer.json: not found"),
        ("not_gguf_name", "name the output file *.gguf"),
        ("no_out_folder", "does not exist"),
        ("gelu", "mlp_type=gelu"),
        ("llama_folder", "model_type is 'llama'"),
        ("bad_dtype", "--dtype"),
        ("bad_target", "--to"),
        ("dtype_for_llama", "--dtype f16: applies to --to gguf"),
        ("adapter", "is a LoRA adapter: merge it into a model folder first (python -m shuangyu.training.merge_lora"),
    ],
)
def test_bad_input_is_one_line_and_exit_status_2(tmp_path, capsys, case, expected):
    src, out, flags = tmp_path / "src", tmp_path / "model.gguf", ["--to", "gguf"]
    if case != "missing_src":
        model_folder(src, **({"mlp_type": "gelu"} if case == "gelu" else {}))
    if case == "no_tokenizer":
        (src / "tokenizer.json").unlink()
    if case == "adapter":  # what a --lora_r run saves: no config.json, an adapter_config.json naming the base
        (src / "config.json").unlink()
        (src / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "base_model_name_or_path": "b"}))
    if case == "not_gguf_name":
        out = tmp_path / "model.bin"
    if case == "no_out_folder":
        out = tmp_path / "missing" / "model.gguf"
    if case == "llama_folder":
        assert main(["--to", "llama", str(src), str(tmp_path / "llama")]) == 0
        capsys.readouterr()
        src = tmp_path / "llama"
    if case == "bad_dtype":
        flags += ["--dtype", "q4"]
    if case == "bad_target":
        flags = ["--to", "onnx"]
    if case == "dtype_for_llama":
        flags, out = ["--to", "llama", "--dtype", "f16"], tmp_path / "llama"
    line = refusal(capsys, [*flags, str(src), str(out)])
    assert line.startswith("python -m shuangyu.modeling.export: error: ") and expected in line, line
    assert not out.exists()


@pytest.mark.slow  # a fresh interpreter importing torch and transformers: ~6 s; main() is tested in-process above
def test_the_command_line_refuses_in_one_line(tmp_path):
    run = subprocess.run(
        [sys.executable, "-m", "shuangyu.modeling.export", "--to", "gguf", str(tmp_path / "nope"), "x.gguf"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 2 and run.stderr.strip().count("\n") == 0 and "nope" in run.stderr


# ---------------------------------------------------------------------------------------------- llama.cpp
LLAMA_CPP_ROPE = {
    "default": dict(max_position_embeddings=64),
    "linear": dict(max_position_embeddings=128, rope_parameters={"rope_type": "linear", "factor": 2.0}),
    "yarn": dict(
        max_position_embeddings=256,
        rope_parameters={"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 64},
    ),
    "llama3": dict(
        max_position_embeddings=256,
        rope_parameters={
            "rope_type": "llama3",
            "factor": 8.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 32,
        },
    ),
}


def llama_cpp_model(path):
    llama_cpp = pytest.importorskip("llama_cpp", reason="make install-llama-cpp (it builds llama.cpp)")
    # An f32 KV cache, so the comparison sees the export, not llama.cpp's default f16 cache rounding (up to 4e-3 to 7e-3 over 200 positions).
    return llama_cpp.Llama(str(path), n_ctx=256, logits_all=True, verbose=False, n_threads=1, type_k=0, type_v=0)


@pytest.mark.slow
def test_llama_cpp_tokenizes_and_generates_like_our_model(tmp_path):
    from transformers import AutoTokenizer

    src, model = model_folder(tmp_path / "src", initializer_range=0.1, tie_word_embeddings=False, rope_theta=50000.0)
    out = tmp_path / "model.gguf"
    assert export(src, out) == 0
    llm = llama_cpp_model(out)
    tok = AutoTokenizer.from_pretrained(src)
    texts = [CHECK_TEXT, *EDGE_STRINGS[1:], *corpus_lines("zh/reviews", 20, "_val"), *corpus_lines("en/bbc_news", 5)]
    for text in texts:
        ids = llm.tokenize(text.encode("utf-8"), add_bos=False, special=False)
        assert ids == tok(text, add_special_tokens=False).input_ids, text[:60]
    prompt = tok("双语模型 is a small bilingual model.", add_special_tokens=False).input_ids
    greedy = model.generate(torch.tensor([prompt]), max_new_tokens=12, do_sample=False, pad_token_id=PAD_ID)
    generated = []
    for token in llm.generate(prompt, temp=0.0, top_k=1):
        generated.append(token)
        if len(generated) == 12:
            break
    assert generated == greedy[0, len(prompt) :].tolist()
    assert llm.detokenize(generated).decode("utf-8", "replace") == tok.decode(generated)
    llm.close()


@pytest.mark.slow
def test_llama_cpp_chats_with_an_instruction_tuned_model_as_transformers_does(tmp_path):
    """llama.cpp formats the conversation with the GGUF's template, ends the reply at <|im_end|> and answers
    what our model answers (greedy); the head is nudged so that <|im_end|> comes within a few tokens."""
    from transformers import AutoTokenizer

    src, model = model_folder(tmp_path / "src", initializer_range=0.1, tie_word_embeddings=False)
    stops = instruction_tuned_folder(src)
    tok = AutoTokenizer.from_pretrained(src)
    messages = [{"role": "user", "content": "给出三个保持健康的秘诀。"}]
    prompt, _ = encode_chat(tok, messages, add_generation_prompt=True)  # as `python -m shuangyu.chat` does
    with torch.no_grad():
        hidden = model(torch.tensor([prompt]), output_hidden_states=True).hidden_states[-1][0].mean(0)
        row = model.lm_head.weight[IM_END_ID].clone()
        for nudge in torch.linspace(0, 2, 41):  # the least that ends the reply after a few tokens
            model.lm_head.weight[IM_END_ID] = row + nudge * hidden / hidden.norm() ** 2
            reply = model.generate(torch.tensor([prompt]), max_new_tokens=40, do_sample=False, eos_token_id=stops)
            reply = reply[0, len(prompt) :].tolist()
            if reply[-1] == IM_END_ID and len(reply) > 3:
                break
    assert reply[-1] == IM_END_ID and len(reply) > 3, reply
    model.save_pretrained(src)
    out = tmp_path / "chat.gguf"
    assert export(src, out) == 0
    llm = llama_cpp_model(out)
    theirs = llm.create_chat_completion(messages=messages, max_tokens=40, temperature=0.0, top_k=1)
    llm.close()
    assert theirs["choices"][0]["finish_reason"] == "stop"
    # the random model's reply cuts characters between tokens: transformers shows U+FFFD, llama-cpp-python drops them
    assert theirs["choices"][0]["message"]["content"] == tok.decode(reply[:-1]).replace("\ufffd", "")


@pytest.mark.slow
def test_llama_cpp_quantizes_the_export_to_q8_0(tmp_path):
    """What `llama-quantize MODEL.gguf OUT.gguf Q8_0` does, through the same library call: under a third of the
    f32 file, logits within int8 rounding of ours. ggml also rounds the activations to int8 for these matmuls:
    2.5% relative error on this random model, 0.9% on the demo's trained one (the same greedy reply); a wrong
    layout would be off by 100%."""
    import ctypes

    llama_cpp = pytest.importorskip("llama_cpp", reason="make install-llama-cpp (it builds llama.cpp)")

    src, model = model_folder(tmp_path / "src", initializer_range=0.1, tie_word_embeddings=False)
    out, q8 = tmp_path / "model.gguf", tmp_path / "model-q8_0.gguf"
    assert export(src, out) == 0
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype, params.nthread = llama_cpp.LLAMA_FTYPE_MOSTLY_Q8_0, 1
    # llama.cpp's quantizer logs token strings cut at 128 bytes, mid-character, which llama-cpp-python's logger
    # cannot decode: no log while it runs, then llama-cpp-python's own logger back (llama.cpp keeps the pointer)
    quiet = llama_cpp.llama_log_callback(lambda level, text, data: None)
    llama_cpp.llama_log_set(quiet, ctypes.c_void_p(0))
    try:
        assert llama_cpp.llama_model_quantize(str(out).encode(), str(q8).encode(), ctypes.byref(params)) == 0
    finally:
        llama_cpp.llama_log_set(llama_cpp._logger.llama_log_callback, ctypes.c_void_p(0))
    assert q8.stat().st_size < out.stat().st_size / 3
    reader, tensors = read(q8)
    assert tensors["blk.0.attn_q.weight"].tensor_type == gguf.GGMLQuantizationType.Q8_0
    llm = llama_cpp_model(q8)
    x = torch.randint(4, VOCAB_SIZE, (64,), generator=torch.Generator().manual_seed(0)).tolist()
    llm.eval(x)
    theirs = torch.tensor(llm.scores[: len(x)])
    llm.close()
    with torch.no_grad():
        ours = model(torch.tensor([x])).logits[0]
    error = (theirs - ours).norm() / ours.norm()
    print(f"q8_0: logits' relative error {error:.4f}")
    assert 0 < error < 0.05


@pytest.mark.slow
@pytest.mark.parametrize("name", list(LLAMA_CPP_ROPE))
def test_llama_cpp_logits_match_ours_with_rope_scaling(tmp_path, name):
    shape = dict(hidden_size=128, num_attention_heads=4, num_key_value_heads=2, head_dim=None)
    src, model = model_folder(tmp_path / "src", initializer_range=0.1, **shape, **LLAMA_CPP_ROPE[name])
    out = tmp_path / "model.gguf"
    assert export(src, out) == 0
    llm = llama_cpp_model(out)
    x = torch.randint(4, VOCAB_SIZE, (200,), generator=torch.Generator().manual_seed(0)).tolist()  # past 64
    llm.eval(x)
    theirs = torch.tensor(llm.scores[: len(x)])
    llm.close()
    with torch.no_grad():
        ours = model(torch.tensor([x])).logits[0]
    torch.testing.assert_close(theirs, ours, rtol=0, atol=1e-4)
