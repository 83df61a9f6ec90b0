"""The app's page (Gradio, imported here only): Chat, Generate, Classify and Compare tabs over `Models`,
served on this machine only, without analytics or a share link. Every handler hands its work to the plain
modules beside this one; a mistake or an unavailable model shows as a message, never a traceback."""

import os
from contextlib import contextmanager

import gradio as gr

from llmpipe.app import chat, classify, compare
from llmpipe.app.chat import LABELS, decoding
from llmpipe.app.models import Choice, Models
from llmpipe.errors import UserError
from llmpipe.generation import Decoding

PRIVACY = "Local only: served on this machine, no analytics, no share link; nothing you type leaves it."


@contextmanager
def shown_to_user():
    """A UserError as the page's error message (the one line the CLI would print), without a traceback."""
    try:
        yield
    except UserError as err:
        raise gr.Error(str(err), print_exception=False) from None


def dropdown(offered: list[Choice], label: str, rank: int = 0) -> gr.Dropdown:
    """The models a tab offers, unavailable ones marked (picking one shows the reason); picked first: the
    available model of `rank` (or the last one)."""
    choices = [(f"{c.name} (unavailable)" if c.unavailable else c.name, c.name) for c in offered]
    ready = [c.name for c in offered if not c.unavailable] or [c.name for c in offered] or [None]
    return gr.Dropdown(choices, value=ready[min(rank, len(ready) - 1)], label=label, interactive=True)


def decoding_controls(max_new_tokens: int) -> list[gr.components.Component]:
    """The options of `llmpipe generate`, held to the same rules (`checked_decoding`)."""
    defaults = Decoding(max_new_tokens=max_new_tokens)
    return [
        gr.Slider(1, 1024, value=defaults.max_new_tokens, step=1, label=LABELS["max_new_tokens"]),
        gr.Slider(0, 2, value=defaults.temperature, step=0.05, label=LABELS["temperature"], info="0: greedy, as the book"),
        gr.Number(defaults.top_k, precision=0, label=LABELS["top_k"], info="empty: no filter; sampling only"),
        gr.Number(defaults.top_p, label=LABELS["top_p"], info="empty: no filter; sampling only"),
        gr.Number(defaults.seed, precision=0, label=LABELS["seed"], info="for sampling"),
    ]


def build(models: Models) -> gr.Blocks:
    with gr.Blocks(title="llmpipe", analytics_enabled=False) as page:
        gr.Markdown(f"# llmpipe\nTalk to the models the pipeline trained. {PRIVACY}")
        with gr.Tabs():
            with gr.Tab("Chat", id="chat", elem_id="tab-chat"):
                chat_tab(page, models)
            with gr.Tab("Generate", id="generate", elem_id="tab-generate"):
                generate_tab(page, models)
            with gr.Tab("Classify", id="classify", elem_id="tab-classify"):
                classify_tab(page, models)
            with gr.Tab("Compare", id="compare", elem_id="tab-compare"):
                compare_tab(page, models)
    return page


def show_status(page: gr.Blocks, picker: gr.Dropdown, status: gr.Markdown, models: Models, kind: str) -> None:
    """The picked model's status line, on page load and on every pick (loading the model)."""
    def line(name):
        return models.status(name, kind) if name else "no model"

    page.load(line, picker, status, api_visibility="undocumented")
    picker.change(line, picker, status, api_visibility="undocumented")


def chat_tab(page: gr.Blocks, models: Models) -> None:
    with gr.Row():
        picker = dropdown(models.instruction_tuned, "Instruction-tuned model")
        status = gr.Markdown()
    show_status(page, picker, status, models, "chat")
    with gr.Accordion("Decoding", open=False):
        controls = decoding_controls(max_new_tokens=128)

    def respond(message, history, name, *controls):
        with shown_to_user():
            yield from chat.reply(models.language_model(name), history, message, decoding(*controls))

    gr.ChatInterface(respond, additional_inputs=[picker, *controls], api_name="chat", chatbot=gr.Chatbot(height=380),
                     textbox=gr.Textbox(placeholder="Give an instruction, e.g. Rewrite the sentence in passive voice: The chef cooked the meal.",
                                        elem_id="chat-input", submit_btn=True, stop_btn=True))


def generate_tab(page: gr.Blocks, models: Models) -> None:
    with gr.Row():
        picker = dropdown(models.pretrained + models.instruction_tuned, "Model")
        status = gr.Markdown()
    show_status(page, picker, status, models, "generate")
    prompt = gr.Textbox(label="Prompt", value="Every effort moves you", lines=2)
    with gr.Accordion("Decoding", open=False):
        controls = decoding_controls(max_new_tokens=50)
    button = gr.Button("Continue", variant="primary")
    output = gr.Textbox(label="Prompt and continuation", lines=8)

    def run(name, text, *controls):
        with shown_to_user():
            for continued in chat.stream(models.language_model(name), text, decoding(*controls)):
                yield text + continued

    button.click(run, [picker, prompt, *controls], output, api_name="generate")


def classify_tab(page: gr.Blocks, models: Models) -> None:
    with gr.Row():
        picker = dropdown(models.classifiers, "Classifier (the classify stage's, or an adaptation method's)")
        status = gr.Markdown()
    show_status(page, picker, status, models, "classify")
    text = gr.Textbox(label="Message", value="You are a winner! Claim your free prize now by replying WIN.", lines=3)
    button = gr.Button("Classify", variant="primary")
    label = gr.Label(num_top_classes=2, label="Probabilities")

    def run(name, message):
        with shown_to_user():
            return classify.probabilities(models.classifier(name), message)

    button.click(run, [picker, text], label, api_name="classify")


def compare_tab(page: gr.Blocks, models: Models) -> None:
    instruction = gr.Textbox(label="Instruction", value="Convert the active sentence to passive: 'The chef cooks the meal every day.'")
    with gr.Row():
        input_text = gr.Textbox(label="Input (optional)")
        reference = gr.Textbox(label="Reference answer (optional: scores the answers)", value="The meal is cooked by the chef every day.")
    with gr.Row():
        # the pretrained model too: the evaluate stage's control, never instruction-tuned
        pickers = [dropdown(models.instruction_tuned + models.pretrained, f"Model {side}", rank) for rank, side in enumerate("AB")]
    max_new_tokens = gr.Slider(1, 1024, value=Decoding().max_new_tokens, step=1, label=LABELS["max_new_tokens"],
                               info="greedy decoding, as the evaluate stage answers")
    button = gr.Button("Compare", variant="primary")
    with gr.Row():
        columns = []
        for side in "AB":
            with gr.Column():
                columns += [gr.Textbox(label=f"Answer {side}", lines=6), gr.Markdown()]
    about_judge = gr.Markdown()

    def run(instruction, input_text, reference, first, second, new_tokens):
        with shown_to_user():
            asked = compare.entry(instruction, input_text, reference)
            settings = decoding(new_tokens, 0.0, None, None, Decoding().seed)
            answers = [compare.answer(models.language_model(name), asked, settings) for name in (first, second)]
            if not reference.strip():
                yield answers[0], "", answers[1], "", "Give a reference answer to score the answers (judge and ROUGE-L)."
                return
            yield answers[0], "scoring…", answers[1], "scoring…", ""
            scorer = models.judge()
            scored = compare.scores(scorer, asked, answers)
            lines = [f"judge **{'unscored' if j is None else f'{j:.1f}'}**/100 · ROUGE-L **{r:.3f}**"
                     for j, r in zip(scored.judge, scored.rouge_l)]
            about = (f"Judge: {getattr(scorer, 'description', scorer.identity)}, scoring as the evaluate stage does (book ch7.8). "
                     "A small judge is a weak one: how far to trust it is measured in metrics/evaluate.json (`validity`).")
            yield answers[0], lines[0], answers[1], lines[1], about

    button.click(run, [instruction, input_text, reference, *pickers, max_new_tokens], [*columns, about_judge], api_name="compare")


def launch(models: Models, host: str, port: int | None) -> tuple[gr.Blocks, str]:
    """The page served at `host:port` (None: the first free port from 7860) in a background thread."""
    os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"  # Gradio reads it at launch, whatever Blocks was told
    page = build(models)
    try:
        _, url, _ = page.launch(server_name=host, server_port=port, share=False, inbrowser=False, prevent_thread_lock=True,
                                quiet=True, ssr_mode=False, mcp_server=False, pwa=False, enable_monitoring=False)
    except OSError as err:
        raise UserError(f"cannot serve on {host}:{port} ({err}); pass another --port, or stop what holds it") from None
    return page, url
