//! Whether a datagram that reached the loss stage is lost: independently, or in
//! bursts following a Gilbert–Elliott chain.

use rand::RngExt;
use rand_chacha::ChaCha8Rng;

/// The loss process of one link.
#[derive(Debug, Clone)]
pub(crate) enum LossModel {
    /// No loss at all; draws nothing from the generator.
    None,
    /// Each datagram is lost with probability `p`, independently of the others.
    Independent { p: f64 },
    /// Two-state chain: in Bad every datagram is lost, in Good none.
    ///
    /// With long-run loss rate `p` and mean burst length `n`, `P(Bad→Good) = 1/n`
    /// makes burst lengths geometric with mean `n`, and `P(Good→Bad) = p/(n(1−p))`
    /// makes the stationary probability of Bad equal to `p`.
    GilbertElliott {
        good_to_bad: f64,
        bad_to_good: f64,
        bad: bool,
    },
}

impl LossModel {
    /// Builds the model for a validated `loss` / `burst` pair. The chain starts Good.
    pub(crate) fn new(loss: f64, burst: Option<f64>) -> Self {
        match burst {
            _ if loss <= 0.0 => Self::None,
            None => Self::Independent { p: loss },
            Some(n) => Self::GilbertElliott {
                good_to_bad: (loss / (n * (1.0 - loss))).min(1.0),
                bad_to_good: 1.0 / n,
                bad: false,
            },
        }
    }

    /// Advances the process by one datagram and says whether that datagram is lost.
    pub(crate) fn next_is_lost(&mut self, rng: &mut ChaCha8Rng) -> bool {
        match self {
            Self::None => false,
            Self::Independent { p } => rng.random::<f64>() < *p,
            Self::GilbertElliott {
                good_to_bad,
                bad_to_good,
                bad,
            } => {
                let leave = if *bad { *bad_to_good } else { *good_to_bad };
                if rng.random::<f64>() < leave {
                    *bad = !*bad;
                }
                *bad
            }
        }
    }
}
