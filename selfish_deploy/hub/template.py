"""The Jinja template of our model card (a string, so the wheel needs no package data for it).

``card.py`` computes every number and passes them in; the template only lays them out.
"""

TEMPLATE = """---
{{ card_data }}
---

# {{ title }}

A **sparse {{ arch_name }} language model** trained with **{{ method_name }}** and exported by
[selfish-deploy](https://pypi.org/project/selfish-deploy/): {{ "%.1f" % (100 * density) }}% of its weight-matrix
entries are non-zero ({{ "{:,}".format(nnz) }} of {{ "{:,}".format(matrix_weights) }}) and stay sparse on disk
(CSR in `model.safetensors`, {{ dtype }} values: {{ "{:,}".format(bytes_stored) }} bytes instead of
{{ "{:,}".format(bytes_dense) }} dense fp32, {{ "%.2f" % compression }}x smaller) and at inference (sparse kernels).
{%- if results %}
{% for r in results %}{{ r.split_name }} perplexity on {{ dataset_name }}: **{{ "%.2f" % r.value }}**{% if not loop.last %}, {% endif %}{% endfor %}.
{%- endif %}

## Architecture

| | |
|---|---|
| cell | {{ arch_name }} (`{{ arch }}`), {{ layers }} layers |
{% if decoder != "softmax" -%}
| decoder | {{ decoder_name }} (`{{ decoder }}`){% if experts %}, {{ experts }} experts{% endif %} |
{% endif -%}
{% for k, v in options.items() -%}
| `--{{ k | replace("_", "-") }}` | {{ v }} |
{% endfor -%}
| embedding / hidden | {{ emb }} / {{ hidden }} |
| vocabulary | {{ "{:,}".format(vocab_size) }} words |
| tied embedding and decoder | {{ "yes" if tie_weights else "no" }} |
| dropout (training) | {{ dropout }} |
| stored dtype | {{ dtype }} (computed in fp32) |
| overall density | {{ "%.4f" % density }} |

{{ layout_text }}
A matrix below density 1.0 is stored as CSR (`NAME.crow_indices`, `NAME.col_indices`, `NAME.values`), the
others and the biases dense.

### Density, non-zeros and bytes per tensor

| tensor | shape | layout | nnz | density | stored bytes | dense fp32 bytes |
|---|---|---|---:|---:|---:|---:|
{% for t in tensors -%}
| `{{ t.name }}` | {{ t.shape }} | {{ t.layout }} | {{ "{:,}".format(t.nnz) }} | {{ "%.4f" % t.density }} | {{ "{:,}".format(t.bytes_stored) }} | {{ "{:,}".format(t.bytes_dense) }} |
{% endfor %}
### Per gate

{{ gate_text }}

| tensor | gate | rows | nnz | density | stored bytes |
|---|---|---:|---:|---:|---:|
{% for g in gates -%}
| `{{ g.tensor }}` | {{ g.gate }} | {{ g.rows }} | {{ "{:,}".format(g.nnz) }} | {{ "%.4f" % g.density }} | {{ "{:,}".format(g.bytes) }} |
{% endfor %}
{% if gate_plot -%}
![density of every gate over training]({{ gate_plot }})

`{{ gate_plot }}`: density of every gate of `W_ih` (solid) and `W_hh` (dashed) over the training steps.
{% endif -%}
{% if other_plots -%}
Other plots from the training run: {% for p in other_plots %}[`{{ p }}`]({{ p }}){% if not loop.last %}, {% endif %}{% endfor %}.
{% endif %}
## Training

- **Sparse-training method**: {{ method_name }} (`--method {{ method }}`). {{ method_text }}
- **Optimizer**: {{ optimizer_text }}
{%- if weights %}
- **Weights**: the best-validation epoch ({{ weights.epoch }}){% if weights.averaged %}, SNT-ASGD's masked averages{% endif %}.
{%- endif %}
{%- if train_rows %}

| setting | value |
|---|---|
{% for k, v in train_rows -%}
| `{{ k }}` | {{ v }} |
{% endfor %}
{%- endif %}
{%- if command %}

The exact command (every resolved setting as a flag; recipes and defaults resolve to these):

```bash
{{ command }}
```
{%- endif %}

## Evaluation

{{ corpus_text }} The vocabulary ({{ "{:,}".format(vocab_size) }} words, `vocab.txt`) is built from all splits
(AWD-LSTM / `word_language_model` convention); text is split on whitespace and every line ends with an `<eos>`
token; unknown words map to `<unk>`. Validation and test perplexity are `exp` of the mean next-token
cross-entropy over the whole split as one stream{% if eval_batch_size %}, batched into {{ eval_batch_size }}
columns{% if test_batch_size and test_batch_size != eval_batch_size %} (test: {{ test_batch_size }}){% endif %}{% endif %}{% if bptt %} and read in BPTT windows of {{ bptt }} tokens with the hidden state carried
across windows{% endif %}, without dropout.

{% if results -%}
| dataset | split | perplexity |
|---|---|---:|
{% for r in results -%}
| {{ dataset_name }} | {{ r.split }} | {{ "%.2f" % r.value }} |
{% endfor %}
{%- else -%}
The source run recorded no perplexity.
{%- endif %}

## Speed
{% if speed %}
Measured on {{ speed.machine }} ({{ speed.date }}): milliseconds per call, this sparse model against the dense
model of the same shape (speed-up = dense / sparse time; below 1x the sparse model is slower).

| case | sparse (ms) | dense (ms) | speed-up |
|---|---:|---:|---:|
{% for r in speed.rows -%}
| {{ r.case }} | {{ "%.3f" % r.ours_ms }} | {{ "%.3f" % r.dense_ms }} | {{ "%.2f" % r.speedup }}x |
{% endfor %}
{%- else %}
No benchmark result was given to the exporter (`selfish-export --speed-report FILE.json`).
{%- endif %}

## Usage

```bash
pip install selfish-deploy
```

Python:

```python
from selfish_deploy.runtime import SparseLM

lm = SparseLM.from_pretrained("{{ repo_id }}")           # revision="v1" or a commit id to pin one
s = lm.score("the market fell sharply")                # tokens, logprobs, log_likelihood, perplexity
print(s.perplexity, lm.generate("the company", max_new_tokens=20, temperature=0.8, top_k=40, seed=1))
```

Command line and HTTP:

```bash
selfish-inspect {{ repo_id }}                          # per-tensor and per-gate density and bytes
selfish-serve --model {{ repo_id }} --port 8000        # NS/NAME@REV pins a revision
curl -s localhost:8000/v1/score -H 'content-type: application/json' -d '{"text": "the market fell"}'
curl -s localhost:8000/v1/generate -H 'content-type: application/json' \\
     -d '{"prompt": "the company", "max_new_tokens": 20, "temperature": 0.8, "top_k": 40, "seed": 1}'
```

`manifest.json` holds the sha256 of every file; loading checks it and refuses a changed model file.

## Limitations

- A word-level model with a closed vocabulary of {{ "{:,}".format(vocab_size) }} words{% if corpus %} from {{ corpus }}{% endif %}: any
  other word is `<unk>`, there is no casing, punctuation or number handling beyond the corpus's own.
- Small by today's standards{% if results %} (test perplexity {{ "%.1f" % results[-1].value }}){% endif %}: a research and
  deployment reference for sparse recurrent networks, not a general-purpose text generator. Generated text
  reflects its training corpus{% if corpus == "ptb" %} (1989 Wall Street Journal){% endif %}.
- The speed-up from sparsity depends on density, matrix sizes, batch size and kernels; measure on your machine.

## Citation

{% if method == "selfish" -%}
Selfish-RNN (the training method{% if optimizer == "snt-asgd" %} and SNT-ASGD{% endif %}):
{%- elif optimizer == "snt-asgd" -%}
Selfish-RNN (SNT-ASGD, the optimizer; {{ method_name }} is one of the paper's baselines):
{%- else -%}
Selfish-RNN (the sparse-training study this model's recipe and baselines come from):
{%- endif %}

```bibtex
@inproceedings{liu2021selfish,
  title     = {Selfish Sparse {RNN} Training},
  author    = {Liu, Shiwei and Mocanu, Decebal Constantin and Pei, Yulong and Pechenizkiy, Mykola},
  booktitle = {Proceedings of the 38th International Conference on Machine Learning (ICML)},
  series    = {Proceedings of Machine Learning Research},
  volume    = {139},
  year      = {2021},
  note      = {arXiv:2101.09048}
}
```

AWD-LSTM (the non-monotonic trigger of NT-ASGD that SNT-ASGD keeps, and the evaluation protocol):

```bibtex
@inproceedings{merity2018regularizing,
  title     = {Regularizing and Optimizing {LSTM} Language Models},
  author    = {Merity, Stephen and Keskar, Nitish Shirish and Socher, Richard},
  booktitle = {International Conference on Learning Representations (ICLR)},
  year      = {2018},
  note      = {arXiv:1708.02182}
}
```
"""
