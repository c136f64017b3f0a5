"""The original project's week-2 network in PyTorch: the baseline of the benchmarks.

Conv3d -> BatchNorm3d -> LeakyReLU -> AvgPool3d(2), three times per branch,
`torch.cat` on channels, Flatten -> Dropout(0.8) -> 5 x (Linear -> Dropout(0.5) ->
LeakyReLU) -> Linear(8) -> Linear(4) -> Linear(1) -> sigmoid, with the original layer
names. keras_cnn's `model.WEEK2` preset is the same network in Keras. `stride` and
`pooling` give the same structure at other sizes (the CPU preset's stride-2 blocks
without pooling), for comparisons at a preset's sizes.
"""


def build_original_pytorch(radius: int, filters: int, kernel_size: int = 5, stride: int = 1,
                           pooling: int = 2):
  """The original week-2 PyTorch net, channels on dim 1 as torch.nn expects; 'same'
  padding, each Conv3d with `stride`, each AvgPool3d of side `pooling` (1: none)."""
  import torch
  from torch import nn

  class CNN(nn.Module):
    """Layer names and order as in the original network."""

    def __init__(self):
      super().__init__()
      padding = (kernel_size - 1) // 2
      for ids in ((6, 7, 8), (15, 16, 17)):
        c_in = 1
        for i in ids:
          setattr(self, f"conv3d_{i}", nn.Conv3d(c_in, filters, kernel_size, stride, padding))
          setattr(self, f"batch_normalization_{i}", nn.BatchNorm3d(filters))
          setattr(self, f"leaky_re_lu_{i}", nn.LeakyReLU())
          setattr(self, f"average_pooling_3d_{i}", nn.AvgPool3d(pooling))
          c_in = filters
      side = 2 * radius + 1
      for _ in range(3):  # 'same': ceil(side / stride) outputs, then floor pooling
        side = -(-side // stride) // pooling
      width = 2 * filters * side ** 3
      self.dropout = nn.Dropout(p=0.8)
      for i, units in enumerate((256, 128, 64, 32, 16)):
        setattr(self, "dense" if i == 0 else f"dense_{i}", nn.Linear(width, units))
        setattr(self, f"dropout_{i + 1}", nn.Dropout(p=0.5))
        setattr(self, f"leaky_re_lu_{18 + i}", nn.LeakyReLU())
        width = units
      self.dense_5 = nn.Linear(16, 8)
      self.dense_6 = nn.Linear(8, 4)
      self.dense_7 = nn.Linear(4, 1)

    def _branch(self, x, ids):
      for i in ids:
        x = getattr(self, f"conv3d_{i}")(x)
        x = getattr(self, f"batch_normalization_{i}")(x)
        x = getattr(self, f"leaky_re_lu_{i}")(x)
        x = getattr(self, f"average_pooling_3d_{i}")(x)
      return x

    def forward(self, n_igm, n_src):
      out = torch.cat((self._branch(n_igm, (6, 7, 8)), self._branch(n_src, (15, 16, 17))), dim=1)
      out = self.dropout(torch.flatten(out, 1))
      for i in range(5):
        out = getattr(self, "dense" if i == 0 else f"dense_{i}")(out)
        out = getattr(self, f"dropout_{i + 1}")(out)
        out = getattr(self, f"leaky_re_lu_{18 + i}")(out)
      return torch.sigmoid(self.dense_7(self.dense_6(self.dense_5(out))))

  return CNN()
