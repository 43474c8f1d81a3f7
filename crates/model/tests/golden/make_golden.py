#!/usr/bin/env python3
"""Exports a small LAS debug state from PyTorch for crates/model/tests/golden.rs.

The model is the reference of ../shared/reference/las_ref.py (same modules, same
names, same teacher forcing), at toy sizes so the files stay small. It writes:

- weights.safetensors: the state_dict (names as lasr uses them),
- grads.safetensors: the gradient of the mean cross-entropy for every parameter,
- io.safetensors: input x (batch-first, B x T x F), targets y (B x L, last token
  <eos>), logits (B x L x V), loss (1).

    /tmp/lasr-torch-venv/bin/pip install torch==2.11.0 safetensors
    /tmp/lasr-torch-venv/bin/python crates/model/tests/golden/make_golden.py

CI only reads the committed files.
"""
import json
import os

import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors.torch import save_file

HERE = os.path.dirname(os.path.abspath(__file__))
CFG = dict(input_dim=5, listener_hidden=4, pyramid_layers=2, embedding_dim=6, speller_hidden=8,
           attention_dim=5, vocab_size=10, sos=1, eos=2)
B, T, L = 2, 16, 5
torch.manual_seed(20261126)
IN, H, E, S, A, V = (CFG[k] for k in ["input_dim", "listener_hidden", "embedding_dim", "speller_hidden",
                                       "attention_dim", "vocab_size"])


class Listener(nn.Module):
    def __init__(self):
        super().__init__()
        self.l0 = nn.LSTM(IN, H, batch_first=True, bidirectional=True)
        self.pyr = nn.ModuleList([nn.LSTM(4 * H, H, batch_first=True, bidirectional=True)
                                  for _ in range(CFG["pyramid_layers"])])

    def forward(self, x):
        h, _ = self.l0(x)
        for lstm in self.pyr:
            b, t, d = h.shape
            h = h[:, : t - (t % 2)].reshape(b, t // 2, 2 * d)
            h, _ = lstm(h)
        return h


class Speller(nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(V, E)
        self.cell0 = nn.LSTMCell(E + 2 * H, S)
        self.cell1 = nn.LSTMCell(S, S)
        self.att_h = nn.Linear(2 * H, A)
        self.att_s = nn.Linear(S, A, bias=False)
        self.att_v = nn.Linear(A, 1, bias=False)
        self.out = nn.Linear(S + 2 * H, V)

    def forward(self, h, y_in):
        ph = self.att_h(h)
        b = h.shape[0]
        h0 = c0 = h1 = c1 = h.new_zeros(b, S)
        ctx = h.new_zeros(b, 2 * H)
        outs = []
        for t in range(y_in.shape[1]):
            e = self.emb(y_in[:, t])
            h0, c0 = self.cell0(torch.cat([e, ctx], dim=-1), (h0, c0))
            h1, c1 = self.cell1(h0, (h1, c1))
            energy = self.att_v(torch.tanh(ph + self.att_s(h1).unsqueeze(1))).squeeze(-1)
            alpha = torch.softmax(energy, dim=-1)
            ctx = torch.bmm(alpha.unsqueeze(1), h).squeeze(1)
            outs.append(self.out(torch.cat([h1, ctx], dim=-1)))
        return torch.stack(outs, dim=1)


class LAS(nn.Module):
    def __init__(self):
        super().__init__()
        self.listener = Listener()
        self.speller = Speller()


model = LAS()
x = torch.randn(B, T, IN)
y = torch.randint(3, V, (B, L))
y[:, -1] = CFG["eos"]
y_in = torch.cat([torch.full((B, 1), CFG["sos"]), y[:, :-1]], dim=1)
logits = model.speller(model.listener(x), y_in)
loss = F.cross_entropy(logits.reshape(-1, V), y.reshape(-1))
loss.backward()

state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
save_file(state, os.path.join(HERE, "weights.safetensors"), metadata={"config": json.dumps(CFG)})
save_file({k: p.grad.contiguous() for k, p in model.named_parameters()}, os.path.join(HERE, "grads.safetensors"))
save_file({"x": x.contiguous(), "y": y.to(torch.float32), "logits": logits.detach().contiguous(),
           "loss": loss.detach().reshape(1)}, os.path.join(HERE, "io.safetensors"))
print(f"torch {torch.__version__}: loss {loss.item():.6f}, {sum(p.numel() for p in model.parameters())} parameters")
