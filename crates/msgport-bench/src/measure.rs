//! How figures are taken and reported: contenders run interleaved rep by rep ([`compare`]),
//! each figure is the median of its reps with the spread of the per-rep ratios, and every
//! figure goes through [`Report::versus`] or [`Report::solo`].

use serde::Serialize;

/// Which way is good for a figure.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Better {
    Lower,
    Higher,
}

impl Better {
    fn word(self) -> &'static str {
        match self {
            Better::Lower => "lower",
            Better::Higher => "higher",
        }
    }
}

/// One figure per rep.
#[derive(Clone, Debug, Default)]
pub(crate) struct Samples(pub Vec<f64>);

impl Samples {
    pub(crate) fn median(&self) -> f64 {
        let mut xs = self.0.clone();
        xs.sort_by(f64::total_cmp);
        xs.get(xs.len() / 2).copied().unwrap_or(f64::NAN)
    }
}

/// Runs every contender once as a warm-up, then `reps` rounds in which each runs once, in turn:
/// drift on the machine hits all of them alike. Returns each contender's samples, in order.
pub(crate) fn compare(reps: usize, contenders: &mut [&mut dyn FnMut() -> f64]) -> Vec<Samples> {
    for c in contenders.iter_mut() {
        c();
    }
    let mut samples = vec![Samples::default(); contenders.len()];
    for _ in 0..reps {
        for (c, s) in contenders.iter_mut().zip(&mut samples) {
            s.0.push(c());
        }
    }
    samples
}

/// One reported figure: msgport's median next to a rival's (or alone), and the spread of the
/// per-rep ratios.
#[derive(Serialize, Debug)]
pub(crate) struct Figure {
    pub group: &'static str,
    pub name: String,
    pub unit: &'static str,
    pub better: Better,
    pub msgport: f64,
    /// The rival's name, or what the figure is read against (`None`: a figure on its own).
    pub rival: Option<String>,
    pub rival_value: Option<f64>,
    /// msgport / rival, medians.
    pub ratio: Option<f64>,
    /// The smallest and largest msgport / rival ratio of one rep (reps are paired in order).
    pub ratio_min: Option<f64>,
    pub ratio_max: Option<f64>,
    /// The per-rep ratios fall on both sides of 1: the difference is within the noise.
    pub within_noise: bool,
}

/// One payload size of a sweep: what each side moved, in GB/s (medians of interleaved reps).
#[derive(Debug, Clone, serde::Serialize)]
pub(crate) struct SweepPoint {
    pub placement: &'static str,
    /// Bytes in the struct's byte string.
    pub size: usize,
    /// msgport first, then each rival.
    pub series: Vec<(String, f64)>,
}

/// Collects the figures of a run and prints each as it is taken.
#[derive(Default)]
pub(crate) struct Report {
    pub figures: Vec<Figure>,
    /// The payload-size sweep, drawn as its own chart.
    pub sweep: Vec<SweepPoint>,
}

impl Report {
    /// [`versus`](Self::versus) against each rival of one comparison: `s[0]` is msgport's
    /// samples, `s[i]` those of `rivals[i - 1]`.
    pub(crate) fn versus_each(
        &mut self,
        group: &'static str,
        name: String,
        unit: &'static str,
        better: Better,
        s: &[Samples],
        rivals: &[&str],
    ) {
        for (i, rival) in rivals.iter().enumerate() {
            self.versus(group, name.clone(), unit, better, &s[0], rival, &s[i + 1]);
        }
    }

    /// msgport against a rival, from interleaved samples.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn versus(
        &mut self,
        group: &'static str,
        name: String,
        unit: &'static str,
        better: Better,
        ours: &Samples,
        rival: &str,
        theirs: &Samples,
    ) {
        let (m, r) = (ours.median(), theirs.median());
        let ratios: Vec<f64> = ours.0.iter().zip(&theirs.0).map(|(a, b)| a / b).collect();
        let lo = ratios.iter().copied().fold(f64::INFINITY, f64::min);
        let hi = ratios.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let within_noise = lo <= 1.0 && hi >= 1.0;
        let ratio = m / r;
        println!(
            "{group:<7} {name:<62} msgport {m:>12.3} {unit:<6} {rival:<34} {r:>12.3}  ratio {ratio:>6.2} [{lo:.2}–{hi:.2}]{} ({} is better)",
            if within_noise { " ~" } else { "" },
            better.word()
        );
        self.figures.push(Figure {
            group,
            name,
            unit,
            better,
            msgport: m,
            rival: Some(rival.to_owned()),
            rival_value: Some(r),
            ratio: Some(ratio),
            ratio_min: Some(lo),
            ratio_max: Some(hi),
            within_noise,
        });
    }

    /// A figure with no rival (a count, a time against a stated target).
    pub(crate) fn solo(
        &mut self,
        group: &'static str,
        name: String,
        unit: &'static str,
        better: Better,
        value: &Samples,
        note: &str,
    ) {
        let m = value.median();
        let lo = value.0.iter().copied().fold(f64::INFINITY, f64::min);
        let hi = value.0.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        println!("{group:<7} {name:<62} msgport {m:>12.3} {unit:<6} [{lo:.3}–{hi:.3}] {note}");
        self.figures.push(Figure {
            group,
            name,
            unit,
            better,
            msgport: m,
            rival: (!note.is_empty()).then(|| note.to_owned()),
            rival_value: None,
            ratio: None,
            ratio_min: None,
            ratio_max: None,
            within_noise: false,
        });
    }
}
