"""client_data.predict: a model's scores of a table's rows, as Keras's Model.predict gives them."""

from unittest import mock

import numpy as np
import tensorflow as tf

from tests import helpers
from tffaml.federated import client_data
from tffaml.models import tabular


class PredictTest(tf.test.TestCase):

  def test_scores_equal_keras_predict_across_batches_and_an_empty_table_has_none(self):
    _, data, space = helpers.loaded_smoke_federation(rows=100)
    model = tabular.build_model(model_type=tabular.ModelType.MLP, feature_space=space, seed=0)
    rows = data.pooled('train')
    expected = model.predict(client_data.feature_tensors(rows, data.schema), verbose=0)[:, 0]
    with mock.patch.object(client_data, 'PREDICT_BATCH', 64):  # Several batches, the last one short.
      scores = client_data.predict(model, rows, data.schema)
    self.assertEqual(scores.shape, (len(rows),))
    self.assertAllClose(scores, expected, rtol=0, atol=1e-6)
    self.assertGreater(np.std(scores), 0)  # Rows get their own scores, in their order.
    self.assertEqual(client_data.predict(model, rows.iloc[:0], data.schema).shape, (0,))


if __name__ == '__main__':
  tf.test.main()
