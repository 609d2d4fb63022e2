"""The chat template rlft gives a tokenizer that has none (and every tiny tokenizer).

Rendered, a conversation reads::

    <|system|>
    You are terse.<EOS>
    <|user|>
    shout: a b c<EOS>
    <|assistant|>
    A B C<EOS>

where ``<EOS>`` is the tokenizer's own eos token, so generation stops at the end of the
assistant's turn. The assistant's content is wrapped in ``{% generation %}`` markers, so
TRL's ``assistant_only_loss`` works with it. Rendering a prompt with
``add_generation_prompt=True`` gives a strict prefix of the rendered prompt + completion,
which TRL's completion-only loss relies on.
"""

DEFAULT_CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{%- if message['role'] == 'assistant' -%}"
    "{{ '<|assistant|>\\n' }}{% generation %}{{ message['content'] + eos_token }}{% endgeneration %}"
    "{%- else -%}"
    "{{ '<|' + message['role'] + '|>\\n' + message['content'] + eos_token + '\\n' }}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<|assistant|>\\n' }}{%- endif -%}"
)
