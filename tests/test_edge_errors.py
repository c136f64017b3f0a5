"""The edge mask of `keras_cnn.benchmarks.edge_errors`, which splits a model's error."""

import numpy as np

from keras_cnn.benchmarks import edge_errors


def test_a_lone_ionized_cell_and_its_six_neighbours_are_the_edge():
  ionized = np.zeros((8, 8, 8), bool)
  ionized[0, 0, 0] = True  # on the box's corner: the neighbours wrap around
  edge = edge_errors.edge_mask(ionized, distance=1)
  assert edge.sum() == 7
  assert edge[0, 0, 0] and edge[-1, 0, 0] and edge[0, 0, 1] and not edge[1, 1, 0]


def test_a_wider_edge_grows_by_one_cell_per_step():
  ionized = np.zeros((16, 16, 16), bool)
  ionized[:8] = True  # two flat walls: between x = 7 and 8, and between 15 and 0
  for distance in (1, 2, 3):
    edge = edge_errors.edge_mask(ionized, distance)
    assert edge[:, 0, 0].sum() == 4 * distance  # `distance` planes on each side of each wall
    assert edge.sum() == 4 * distance * 16 * 16
