//! Turning a conversation into the model's prompt text with the chat template stored in the
//! GGUF file (`tokenizer.chat_template`, a Jinja template as on Hugging Face), rendered by
//! minijinja with Python-style string methods, the way llama.cpp's server does with `--jinja`.

use minijinja::{Environment, Error, ErrorKind, context};

use caiflow_llm::Message;

/// ChatML, for GGUF files that carry no template of their own.
const CHATML: &str = "{% for message in messages %}<|im_start|>{{ message.role }}\n{{ message.content }}<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}";

pub struct ChatRenderer {
    env: Environment<'static>,
    bos_token: String,
    eos_token: String,
}

impl std::fmt::Debug for ChatRenderer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChatRenderer").finish_non_exhaustive()
    }
}

impl ChatRenderer {
    /// `template` None falls back to ChatML.
    pub fn new(
        template: Option<String>,
        bos_token: String,
        eos_token: String,
    ) -> Result<Self, String> {
        let mut env = Environment::new();
        minijinja_contrib::add_to_environment(&mut env);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function(
            "raise_exception",
            |message: String| -> Result<String, Error> {
                Err(Error::new(ErrorKind::InvalidOperation, message))
            },
        );
        env.add_template_owned("chat", template.unwrap_or_else(|| CHATML.to_string()))
            .map_err(|e| format!("the model's chat template does not parse: {e}"))?;
        Ok(ChatRenderer {
            env,
            bos_token,
            eos_token,
        })
    }

    /// The prompt for `messages`, ending with the opening of the assistant's turn.
    pub fn render(&self, messages: &[Message]) -> Result<String, String> {
        let template = self
            .env
            .get_template("chat")
            .map_err(|e| format!("chat template: {e}"))?;
        template
            .render(context! {
                messages => messages,
                add_generation_prompt => true,
                bos_token => &self.bos_token,
                eos_token => &self.eos_token,
            })
            .map_err(|e| format!("chat template could not render this conversation: {e}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_hugging_face_style_templates() {
        // The shape of SmolLM2's template: a default system turn, Python string methods.
        let template = "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\nYou are helpful.<|im_end|>\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'].strip() + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";
        let r =
            ChatRenderer::new(Some(template.into()), String::new(), "<|im_end|>".into()).unwrap();
        let text = r.render(&[Message::user("  Hi there ")]).unwrap();
        assert_eq!(
            text,
            "<|im_start|>system\nYou are helpful.<|im_end|>\n<|im_start|>user\nHi there<|im_end|>\n<|im_start|>assistant\n"
        );
    }

    #[test]
    fn raise_exception_is_an_error_and_missing_template_is_chatml() {
        let r = ChatRenderer::new(
            Some("{{ raise_exception('no system role') }}".into()),
            String::new(),
            String::new(),
        )
        .unwrap();
        assert!(
            r.render(&[Message::user("x")])
                .unwrap_err()
                .contains("no system role")
        );
        let r = ChatRenderer::new(None, String::new(), String::new()).unwrap();
        assert!(
            r.render(&[Message::user("x")])
                .unwrap()
                .ends_with("<|im_start|>assistant\n")
        );
    }
}
