#!/usr/bin/env python3
"""Writes the generated seeds of fuzz/corpus/ (run from the repository root). The chat
templates of the shipped test models were copied from their GGUF files once; the example
pipelines are copies of examples/*.toml and the test pipeline of crates/intake/tests."""
import base64, struct, zlib

C = 'fuzz/corpus/'

def w(p, t):
    open(C + p, 'wb').write(t if isinstance(t, bytes) else t.encode())

# --- templates: the built-in fallbacks
src = open('crates/engine/src/chat.rs').read()
def const(name):
    start = f'pub const {name}: &str = "\\\n'
    i = src.index(start) + len(start)
    j = src.index('";', i)
    return src[i:j].replace('\\\n', '').replace('\\n', '\n').replace("\\'", "'")
w('template/mistral-fallback.jinja', const('MISTRAL_FALLBACK'))
w('template/gemma-fallback.jinja', const('GEMMA_FALLBACK'))

# --- gguf: a tiny llama-shaped file with a gpt2 tokenizer and one F32 tensor, a
# sentencepiece-style tokenizer, an empty file
def s(x):
    b = x.encode()
    return struct.pack('<Q', len(b)) + b
def kv_str(k, v): return s(k) + struct.pack('<I', 8) + s(v)
def kv_u32(k, v): return s(k) + struct.pack('<I', 4) + struct.pack('<I', v)
def kv_f32(k, v): return s(k) + struct.pack('<I', 6) + struct.pack('<f', v)
def kv_arr_str(k, vs): return s(k) + struct.pack('<I', 9) + struct.pack('<IQ', 8, len(vs)) + b''.join(s(v) for v in vs)
def kv_arr_i32(k, vs): return s(k) + struct.pack('<I', 9) + struct.pack('<IQ', 5, len(vs)) + b''.join(struct.pack('<i', v) for v in vs)
def kv_arr_f32(k, vs): return s(k) + struct.pack('<I', 9) + struct.pack('<IQ', 6, len(vs)) + b''.join(struct.pack('<f', v) for v in vs)
def gguf(kvs, tensors):
    head = b'GGUF' + struct.pack('<IQQ', 3, len(tensors), len(kvs)) + b''.join(kvs)
    off, infos, data = 0, b'', b''
    for name, dims, raw in tensors:
        infos += s(name) + struct.pack('<I', len(dims)) + b''.join(struct.pack('<Q', d) for d in dims) + struct.pack('<IQ', 0, off)
        data += raw
        data += b'\0' * ((-len(data)) % 32)
        off = len(data)
    body = head + infos
    body += b'\0' * ((-len(body)) % 32)
    return body + data
tokens = ['<s>', '</s>', '<unk>', 'H', 'e', 'l', 'o', ' ', 'w', 'r', 'd', 'He', 'll', 'Hell', 'Hello', 'Ġ', 'Ġw', 'or', 'ld']
merges = ['H e', 'l l', 'He ll', 'Hell o', 'o r', 'l d']
kvs = [kv_str('general.architecture', 'llama'), kv_str('general.name', 'fuzz-seed'),
       kv_u32('general.alignment', 32),
       kv_u32('llama.embedding_length', 8), kv_u32('llama.attention.head_count', 2),
       kv_u32('llama.attention.head_count_kv', 1), kv_u32('llama.block_count', 1),
       kv_u32('llama.feed_forward_length', 16), kv_u32('llama.context_length', 64),
       kv_f32('llama.attention.layer_norm_rms_epsilon', 1e-5), kv_f32('llama.rope.freq_base', 10000.0),
       kv_str('tokenizer.ggml.model', 'gpt2'), kv_arr_str('tokenizer.ggml.tokens', tokens),
       kv_arr_i32('tokenizer.ggml.token_type', [3, 3, 2] + [1] * (len(tokens) - 3)),
       kv_arr_str('tokenizer.ggml.merges', merges),
       kv_u32('tokenizer.ggml.bos_token_id', 0), kv_u32('tokenizer.ggml.eos_token_id', 1),
       kv_str('tokenizer.chat_template', "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}{% endfor %}")]
emb = struct.pack('<' + 'f' * (8 * len(tokens)), *([0.5] * (8 * len(tokens))))
w('gguf/llama-gpt2.gguf', gguf(kvs, [('token_embd.weight', [8, len(tokens)], emb)]))
spm = ['<unk>', '<s>', '</s>', '▁', '▁Hello', '▁w', 'orld', '<0x41>']
w('gguf/llama-spm.gguf', gguf([kv_str('general.architecture', 'llama'), kv_str('tokenizer.ggml.model', 'llama'),
                               kv_arr_str('tokenizer.ggml.tokens', spm),
                               kv_arr_f32('tokenizer.ggml.scores', [-float(i) for i in range(len(spm))]),
                               kv_arr_i32('tokenizer.ggml.token_type', [2, 3, 3, 1, 1, 1, 1, 6])], []))
w('gguf/empty-v3.gguf', b'GGUF' + struct.pack('<IQQ', 3, 0, 0))

# --- mail
plain = "From: Jeanne Martin <jeanne@example.fr>\r\nTo: desk@example.org\r\nSubject: Facture 2024\r\nMessage-ID: <1@x>\r\nDate: Mon, 2 Dec 2024 10:00:00 +0100\r\n\r\nBonjour, voici ma facture.\r\n"
w('mime/plain.eml', plain)
w('mime/multipart.eml', "From: =?utf-8?q?=C3=89mile_Zola?= <emile@example.fr>\r\nReply-To: other@example.net\r\nSubject: =?utf-8?b?w4l0w6kgMjAyNA==?=\r\nAuthentication-Results: mx.example.org; dkim=pass; spf=pass; dmarc=pass\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=\"b1\"\r\n\r\n--b1\r\nContent-Type: multipart/alternative; boundary=b2\r\n\r\n--b2\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\nCh=C3=A8re madame,=\r\n voici.\r\n--b2\r\nContent-Type: text/html; charset=utf-8\r\n\r\n<p>Ch&egrave;re <b>madame</b></p><script>x()</script>\r\n--b2--\r\n--b1\r\nContent-Type: text/csv; name=\"a.csv\"\r\nContent-Disposition: attachment; filename=\"a.csv\"\r\nContent-Transfer-Encoding: base64\r\n\r\n" + base64.b64encode(b"id,amount\n1,12.50\n").decode() + "\r\n--b1\r\nContent-Type: message/rfc822\r\n\r\nFrom: a@b.c\r\nSubject: inner\r\n\r\ninner body\r\n--b1--\r\n")
w('mime/not-mime.txt', "just some words without headers\n")
content = b"BT /F1 12 Tf 72 720 Td (Invoice 42 for Jeanne Martin) Tj ET"
def pdf_with(stream_dict, stream):
    objs = [b"<< /Type /Catalog /Pages 2 0 R >>", b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
            b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents 4 0 R /Resources << /Font << /F1 5 0 R >> >> >>",
            stream_dict + b"\nstream\n" + stream + b"\nendstream",
            b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>"]
    pdf, offs = b"%PDF-1.4\n", []
    for i, o in enumerate(objs):
        offs.append(len(pdf))
        pdf += b"%d 0 obj\n" % (i + 1) + o + b"\nendobj\n"
    x = len(pdf)
    pdf += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objs) + 1) + b"".join(b"%010d 00000 n \n" % o for o in offs)
    return pdf + b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (len(objs) + 1, x)
zc = zlib.compress(content)
for name, pdf in [('pdf', pdf_with(b"<< /Length %d >>" % len(content), content)),
                  ('pdf-flate', pdf_with(b"<< /Length %d /Filter /FlateDecode >>" % len(zc), zc))]:
    w(f'mime-child/{name}.eml', "From: Jeanne <jeanne@example.fr>\r\nSubject: invoice\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=\"b\"\r\n\r\n--b\r\nContent-Type: text/plain\r\n\r\nsee attached\r\n--b\r\nContent-Type: application/pdf\r\nContent-Disposition: attachment; filename=\"invoice.pdf\"\r\nContent-Transfer-Encoding: base64\r\n\r\n" + base64.encodebytes(pdf).decode().replace('\n', '\r\n') + "--b--\r\n")
w('mime-child/plain.eml', plain)

# --- OpenAI request bodies
w('openai/chat.json', '{"model":"m","messages":[{"role":"system","content":"Be terse."},{"role":"user","content":[{"type":"text","text":"Hi"}],"name":"ann"}],"max_tokens":16,"temperature":0.7,"top_p":0.9,"stop":["\\n"],"seed":1,"stream":true,"stream_options":{"include_usage":true},"logprobs":true,"top_logprobs":2}')
w('openai/tools.json', '{"model":"m","messages":[{"role":"user","content":"weather?"},{"role":"assistant","content":null,"tool_calls":[{"id":"c1","type":"function","function":{"name":"get","arguments":"{\\"city\\":\\"Paris\\"}"}}]},{"role":"tool","tool_call_id":"c1","content":"sunny"}],"tools":[{"type":"function","function":{"name":"get","description":"Weather","parameters":{"type":"object","properties":{"city":{"type":"string"}},"required":["city"]}}}],"tool_choice":"auto"}')
w('openai/schema.json', '{"model":"m","messages":[{"role":"user","content":"json"}],"response_format":{"type":"json_schema","json_schema":{"name":"x","strict":true,"schema":{"type":"object","properties":{"a":{"type":"integer","minimum":0},"b":{"enum":["x","y"]}},"required":["a"],"additionalProperties":false}}}}')
w('openai/completion.json', '{"model":"m","prompt":["Once upon","a time"],"max_tokens":8,"echo":true,"logprobs":1,"n":1,"logit_bias":{"50256":-100}}')
w('openai/embedding.json', '{"model":"e","input":["hello","world"],"encoding_format":"base64","dimensions":8}')

# --- SSE streams
w('sse/openai.txt', 'data: {"id":"1","choices":[{"delta":{"content":"Hel"}}]}\n\ndata: {"id":"1","choices":[{"delta":{"content":"lo"}}]}\r\n\r\n: keep-alive\r\rdata: {"usage":{"prompt_tokens":3}}\n\ndata: [DONE]\n\n')
w('sse/multiline.txt', 'event: message\r\ndata: line one\r\ndata:line two\r\nid: 7\r\n\r\ndata: tail without end')
