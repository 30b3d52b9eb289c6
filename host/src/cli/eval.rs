//! `medguard eval`: runs the real guard over clean, attacked and corrupted
//! images and reports detection and accuracy with bootstrap intervals.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use clap::Args;

use super::{Exit, SandboxArgs, progress_bar, unsigned_or_refused};
use crate::eval::{Estimate, plot};
use crate::input;
use crate::model_dir::read_capped;
use crate::vendor::evaluation::{CertifiedAccuracy, EvalSet, FlipCount, Options, Report, evaluate};

/// Measure the guard: run the real guest over clean test images, attack sets
/// and benign corruptions; write a JSON report and a ROC plot.
#[derive(Debug, Args)]
pub struct EvalCmd {
    /// A calibrated model directory.
    model_dir: PathBuf,
    /// .npz archive with the clean test images and labels.
    #[arg(long, value_name = "NPZ")]
    clean: PathBuf,
    /// Array of clean uint8 images [N, H, W] in the archive.
    #[arg(long, default_value = "test_images")]
    clean_array: String,
    /// Array of integer labels in the archive.
    #[arg(long, default_value = "test_labels")]
    labels_array: String,
    /// Directory of attack and corruption sets (tests/adversarial/sets):
    /// `corruption-*.npz` hold `images`; every other .npz holds `images` and
    /// `flipped` (only flipped images count as attacks).
    /// Without it, only the clean images are measured (and certified, for
    /// a certifiable model).
    #[arg(long, value_name = "DIR")]
    sets: Option<PathBuf>,
    /// Where to write the JSON report.
    #[arg(long, value_name = "JSON")]
    out: PathBuf,
    /// Where to write the ROC plot (SVG).
    #[arg(long, value_name = "SVG")]
    plot: Option<PathBuf>,
    /// Where to write the certified-accuracy curve (SVG), for a model whose
    /// manifest asks for certified predictions.
    #[arg(long, value_name = "SVG")]
    certified_plot: Option<PathBuf>,
    /// Bootstrap resamples for the confidence intervals.
    #[arg(long, default_value_t = 1000)]
    bootstrap: usize,
    /// Seed of the guest's noise draws and of the bootstrap.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Sandboxes to run in parallel.
    #[arg(long, default_value_t = 2)]
    threads: usize,
}

impl EvalCmd {
    pub(super) fn execute(self, sandbox: &SandboxArgs) -> anyhow::Result<Exit> {
        sandbox.without_request_budget("eval")?;
        let Some(model) = unsigned_or_refused(&self.model_dir) else {
            return Ok(Exit::Refused);
        };
        if model.manifest().screening.is_none() {
            eprintln!(
                "medguard: refused: {} has no screening profile; run `medguard calibrate` first",
                model.manifest().name
            );
            return Ok(Exit::Refused);
        }
        let bytes = read_capped(&self.clean, input::ARCHIVE_MAX_BYTES)?;
        let clean_images = input::read_npz_images(&bytes, &self.clean_array)
            .with_context(|| format!("reading {}", self.clean.display()))?;
        let (_, labels) = input::read_npz_array::<u8>(&bytes, &self.labels_array)
            .with_context(|| format!("reading labels from {}", self.clean.display()))?;
        let listed = match &self.sets {
            Some(dir) => list_sets(dir)?,
            None => Vec::new(),
        };
        let sets = listed
            .into_iter()
            .map(|set| {
                let bytes = read_capped(&set.path, input::ARCHIVE_MAX_BYTES)?;
                let read = || format!("reading {}", set.path.display());
                let images = input::read_npz_images(&bytes, "images").with_context(read)?;
                let (flipped, source_index, clean_pred) = if set.corruption {
                    (None, None, None)
                } else {
                    let (_, flipped) = input::read_npz_array::<bool>(&bytes, "flipped")
                        .with_context(|| {
                            format!("reading `flipped` from {}", set.path.display())
                        })?;
                    (
                        Some(flipped),
                        read_indices(&bytes, &set.path, "source_index")?,
                        read_indices(&bytes, &set.path, "clean_pred")?,
                    )
                };
                Ok(EvalSet {
                    name: set.name,
                    images,
                    flipped,
                    source_index,
                    clean_pred,
                })
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        let (program, _) = sandbox.start(None)?;
        let certifies = model.radius_table().is_some();
        let total = clean_images.len() * (1 + usize::from(certifies))
            + sets
                .iter()
                .map(|s| match (&s.flipped, &s.source_index) {
                    // Screened and certified whole, against the clean image.
                    (Some(_), Some(_)) if certifies => 2 * s.images.len(),
                    (Some(f), _) => f.iter().filter(|&&x| x).count(),
                    (None, _) => s.images.len(),
                })
                .sum::<usize>();
        let bar = progress_bar(total, "evaluating")?;
        let options = Options {
            bootstrap: self.bootstrap,
            seed: self.seed,
            threads: self.threads,
        };
        let (report, curves) = evaluate(
            &program,
            &model,
            &clean_images,
            &labels,
            &sets,
            options,
            &|n| bar.inc(n as u64),
        )?;
        bar.finish_and_clear();
        let mut text = serde_json::to_vec_pretty(&report)?;
        text.push(b'\n');
        std::fs::write(&self.out, text)
            .with_context(|| format!("writing {}", self.out.display()))?;
        if let Some(path) = &self.plot {
            plot::roc_svg(
                path,
                &format!("medguard screening, {}", report.model),
                &curves,
            )?;
        }
        if let (Some(path), Some(c)) = (&self.certified_plot, &report.certified) {
            let curve = |label: String, y: &dyn Fn(&CertifiedAccuracy) -> f64| plot::Curve {
                label,
                points: c.curve.iter().map(|a| (a.radius(), y(a))).collect(),
            };
            let mut curves = vec![curve("balanced accuracy".into(), &|a| a.balanced_accuracy)];
            for name in &model.manifest().output.labels {
                curves.push(curve(format!("{name} (per-class rate)"), &|a| {
                    a.per_class.get(name).copied().unwrap_or(0.0)
                }));
            }
            plot::certified_svg(
                path,
                &format!("{}: certified accuracy, {}", report.model, c.method()),
                c.norm(),
                c.curve.last().map_or(1.0, |a| a.radius().max(0.01)),
                &curves,
            )?;
        }
        print_summary(&report);
        Ok(Exit::Ok)
    }
}

/// An optional 1-D array of non-negative integers (of any integer type
/// NumPy writes) in an attack set: `source_index` (which clean test image
/// each attacked image was made from) or `clean_pred` (its class then).
fn read_indices(bytes: &[u8], path: &Path, name: &str) -> anyhow::Result<Option<Vec<usize>>> {
    let names =
        input::npz_array_names(bytes).with_context(|| format!("reading {}", path.display()))?;
    if !names.iter().any(|n| n == name) {
        return Ok(None);
    }
    fn widen<T: Into<i64>>((shape, v): (Vec<usize>, Vec<T>)) -> (Vec<usize>, Vec<i64>) {
        (shape, v.into_iter().map(Into::into).collect())
    }
    let (shape, values) = input::read_npz_array::<i64>(bytes, name)
        .or_else(|_| input::read_npz_array::<i32>(bytes, name).map(widen))
        .or_else(|_| input::read_npz_array::<u32>(bytes, name).map(widen))
        .or_else(|_| input::read_npz_array::<u16>(bytes, name).map(widen))
        .or_else(|_| input::read_npz_array::<u8>(bytes, name).map(widen))
        .with_context(|| {
            format!(
                "reading `{name}` from {}: it must be an integer array",
                path.display()
            )
        })?;
    if shape.len() != 1 {
        bail!(
            "{}: `{name}` has shape {shape:?}; expected one entry per image",
            path.display()
        );
    }
    let values = values
        .into_iter()
        .map(usize::try_from)
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("{}: `{name}` holds a negative value", path.display()))?;
    Ok(Some(values))
}

struct SetFile {
    name: String,
    path: PathBuf,
    corruption: bool,
}

fn list_sets(dir: &Path) -> anyhow::Result<Vec<SetFile>> {
    let mut sets: Vec<SetFile> = std::fs::read_dir(dir)
        .with_context(|| format!("listing {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "npz"))
        .filter_map(|path| {
            let name = path.file_stem()?.to_string_lossy().into_owned();
            Some(SetFile {
                corruption: name.starts_with("corruption-"),
                name,
                path,
            })
        })
        .collect();
    if sets.is_empty() {
        bail!("{} holds no .npz sets", dir.display());
    }
    // Attacks by family then strength, as a reader scans the table.
    sets.sort_by_key(|s| {
        let (family, strength) = s.name.rsplit_once('-').unwrap_or((&s.name, ""));
        (
            s.corruption,
            family.to_owned(),
            strength.parse::<f64>().map_or(0, |v| (v * 100.0) as u64),
            s.name.clone(),
        )
    });
    Ok(sets)
}

fn print_summary(r: &Report) {
    let pct = |e: &Estimate| {
        format!(
            "{:5.1}% [{:.1}, {:.1}]",
            e.value * 100.0,
            e.ci_low * 100.0,
            e.ci_high * 100.0
        )
    };
    println!(
        "clean test: {} images; flagged {} (target {}%), rejected {} (target {}%); accuracy {:.3}, of accepted {:.3}",
        r.clean.images,
        pct(&r.clean.flagged),
        r.thresholds.flag_target_fpr * 100.0,
        pct(&r.clean.rejected),
        r.thresholds.reject_target_fpr * 100.0,
        r.clean.accuracy_all,
        r.clean.accuracy_accepted
    );
    if let Some(c) = &r.certified {
        println!(
            "certified ({}): no radius {:.1}%, certified to the required {} {:.1}%; {:.0} ms per \
             image",
            c.method(),
            c.abstained * 100.0,
            c.requirement(),
            c.certified_at_requirement * 100.0,
            c.ms_per_image
        );
        for a in &c.at {
            let classes: Vec<String> = a
                .per_class
                .iter()
                .map(|(k, v)| format!("{k} {v:.3}"))
                .collect();
            let radius = match (a.radius_l2, a.radius_linf) {
                (Some(r), _) => format!("L2 {r:<6}"),
                (_, r) => format!("L-inf {:.2}/255", r.unwrap_or(0.0) * 255.0),
            };
            println!(
                "  {radius} balanced accuracy {:.3} (accuracy {:.3}; {})",
                a.balanced_accuracy,
                a.accuracy,
                classes.join(", ")
            );
        }
    }
    println!(
        "\n{:<10} {:>7} {:>22} {:>24} {:>24} {:>8} {:>8}",
        "attack", "flipped", "ROC-AUC [95% CI]", "TPR@1%FPR", "TPR@5%FPR", "past rej", "past flg"
    );
    for a in &r.attacks {
        println!(
            "{:<10} {:>7} {:>22} {:>24} {:>24} {:>7.1}% {:>7.1}%",
            a.name,
            a.flipped,
            format!(
                "{:.3} [{:.3}, {:.3}]",
                a.roc_auc.value, a.roc_auc.ci_low, a.roc_auc.ci_high
            ),
            pct(&a.tpr_at_1pct_fpr),
            pct(&a.tpr_at_5pct_fpr),
            a.success_past_reject * 100.0,
            a.success_past_flag * 100.0,
        );
    }
    let guarded: Vec<_> = r
        .attacks
        .iter()
        .filter_map(|a| a.guarded.as_ref().map(|g| (&a.name, g)))
        .collect();
    if !guarded.is_empty() {
        println!(
            "\nthe whole guard (screening and certificate), every attempted image:\n\
             {:<16} {:>5} {:>8} {:>9} {:>10} {:>14} {:>20} {:>20}",
            "attack",
            "n",
            "med L2",
            "accepted",
            "kept label",
            "silent flips",
            "inside radius",
            "outside radius"
        );
        for (name, g) in guarded {
            let group = |f: &FlipCount| format!("{}/{}", f.silent_flips, f.images);
            println!(
                "{:<16} {:>5} {:>8.3} {:>8.1}% {:>9.1}% {:>13.1}% {:>20} {:>20}",
                name,
                g.attempted,
                g.median_l2,
                g.accepted.value * 100.0,
                g.accepted_clean_label.value * 100.0,
                g.silent_flips.value * 100.0,
                group(&g.inside_radius),
                group(&g.outside_radius),
            );
            // Inside the radius, a changed certified class is the
            // certificate's failure, flagged or not: never silent here.
            if g.inside_radius.class_changed > 0 {
                println!(
                    "  {name}: {} image(s) inside the certified radius changed their certified class",
                    g.inside_radius.class_changed
                );
            }
        }
    }
    println!(
        "\n{:<28} {:>24} {:>24}",
        "benign corruption", "flagged", "rejected"
    );
    for c in &r.corruptions {
        println!(
            "{:<28} {:>24} {:>24}",
            c.name,
            pct(&c.flagged),
            pct(&c.rejected)
        );
    }
}
