from absl.testing import parameterized
import numpy as np
import tensorflow as tf
import tensorflow_federated as tff

from tffaml.federated import aggregators
from tffaml.federated import robust

VECTOR = tff.TensorType(np.float32, [2])
# Four honest updates and one poisoned one, far out.
VALUES = [np.array(v, np.float32) for v in ([1, 2], [2, 1], [3, 4], [4, 3], [100, -100])]


class TypeSignatureTest(tf.test.TestCase):

  def test_median_next_signature(self):
    signature = robust.median().create(VECTOR).next.type_signature
    self.assertEqual(str(signature.parameter[1]), '{float32[2]}@CLIENTS')
    self.assertEqual(str(signature.result.result), 'float32[2]@SERVER')

  def test_bad_arguments_are_named(self):
    with self.assertRaisesRegex(ValueError, 'trim_fraction must be in'):
      robust.trimmed_mean(0.5)
    with self.assertRaisesRegex(ValueError, 'need 0 < clip <= zeroing_norm, got clip=2, zeroing_norm=1'):
      robust.fixed_clipping_and_zeroing(clip=2, zeroing_norm=1, weighted=False)
    with self.assertRaisesRegex(ValueError, "'median' counts every institution once"):
      aggregators.configure_aggregator(aggregator_type=aggregators.AggregatorType.MEDIAN,
                                       weighted=True, clients_per_round=3)


class ExecutionTest(tf.test.TestCase, parameterized.TestCase):

  def run_once(self, factory, values=VALUES):
    process = factory.create(VECTOR)
    return process.next(process.initialize(), values).result

  def test_median_hand_computed(self):
    # Per coordinate: sorted [1, 2, 3, 4, 100] -> 3; [-100, 1, 2, 3, 4] -> 2.
    self.assertAllClose(self.run_once(robust.median()), [3.0, 2.0])
    # An even count averages the middle two: [1, 2, 3, 4] -> 2.5.
    self.assertAllClose(self.run_once(robust.median(), VALUES[:4]), [2.5, 2.5])

  def test_trimmed_mean_hand_computed(self):
    # trim 0.2 of 5 drops one value at each end: mean of [2, 3, 4] and [1, 2, 3].
    self.assertAllClose(self.run_once(robust.trimmed_mean(0.2)), [3.0, 2.0])
    self.assertAllClose(self.run_once(robust.trimmed_mean(0.0)), np.mean(VALUES, axis=0))

  def test_structures(self):
    value_type = tff.types.to_type([(np.float32, [2]), (np.float32, [1])])
    process = robust.median().create(value_type)
    result = process.next(process.initialize(), [[v, v[:1]] for v in VALUES]).result
    self.assertAllClose(result[0], [3.0, 2.0])
    self.assertAllClose(result[1], [3.0])

  def test_fixed_clipping_and_zeroing(self):
    factory = robust.fixed_clipping_and_zeroing(clip=1.0, zeroing_norm=10.0, weighted=False)
    # [3, 4] is clipped to [0.6, 0.8]; [100, -100] (norm 141) is zeroed: counted as [0, 0].
    result = self.run_once(factory, [np.array([3, 4], np.float32), np.array([100, -100], np.float32)])
    self.assertAllClose(result, [0.3, 0.4])
