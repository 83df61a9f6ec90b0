"""`llmpipe app`: a local web app over the pipeline's models. The prompt and response logic lives in plain
modules (models, chat, classify, compare) that tests call without a UI; `ui` alone imports Gradio."""
