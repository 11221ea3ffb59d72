"""The Hugging Face Hub side of an export directory: its model card, pushing it, and resolving Hub ids.

    card.py / template.py   README.md model card (ModelCard + our Jinja template)
    resolve.py              "local path or NS/NAME[@REV]" -> local export directory (snapshot_download)
    push.py                 ``selfish-push EXPORT_DIR --repo-id NS/NAME``
    mixin.py                ``from_pretrained`` / ``save_pretrained`` / ``push_to_hub`` for the runtime
    errors.py               huggingface_hub exceptions -> one-line ``UserError``

Nothing here imports the runtime, training or serving.
"""
