# Reference fits of the classic Theoph data with R's nlme, for validating pkpd's population fitting code.
#
# Regenerate (from the repository root; needs R with nlme and jsonlite, e.g. on Debian
#   apt-get install -y --no-install-recommends r-base-core r-cran-nlme r-cran-jsonlite):
#
#   Rscript benchmarks/validation/theoph_nlme.R
#
# Writes benchmarks/validation/theoph_nlme_reference.json (or the path given as the first argument).
# CI never runs this script: the JSON it writes is committed and read by the Python tests.
#
# Model (Pinheiro & Bates 2000, sections 6.4 and 8.2): one-compartment, first-order absorption and
# elimination, SSfol parameterization on the log scale,
#   conc = Dose * exp(lKe + lKa - lCl) / (exp(lKa) - exp(lKe)) * (exp(-exp(lKe) * Time) - exp(-exp(lKa) * Time))
# with Dose in mg/kg, Time in h, conc in mg/L, so exp(lKe), exp(lKa) are in 1/h and exp(lCl) = CL/F in L/h/kg.
# Random effects b_i ~ N(0, Psi) added to the log-parameters; additive (homoscedastic) residual error.
#
# Fits:
#   ml_diag   pdDiag(lKa + lCl), method = "ML"
#   reml_diag pdDiag(lKa + lCl), method = "REML" (NB: nlme()'s default method is "ML", unlike lme())
#   ml_symm   pdSymm(lKe + lKa + lCl) (full 3x3), method = "ML"
# ml_diag is Pinheiro & Bates's fm3Theo.nlme and ml_symm their fm1Theo.nlme; the script re-runs the book's
# own code (nlme's scripts/ch08.R) and records the agreement.

suppressPackageStartupMessages({
  library(nlme)
  library(jsonlite)
})

args <- commandArgs(trailingOnly = FALSE)
script_file <- sub("^--file=", "", args[grep("^--file=", args)])
script_dir <- if (length(script_file) == 1) dirname(normalizePath(script_file)) else "benchmarks/validation"
trailing <- commandArgs(trailingOnly = TRUE)
out_path <- if (length(trailing) >= 1) trailing[1] else file.path(script_dir, "theoph_nlme_reference.json")
csv_path <- file.path(script_dir, "..", "..", "pkpd", "datasets", "theoph.csv")

N_TIMING_RUNS <- 5L

data("Theoph", package = "datasets")

# ------------------------------------------------------------------------------------------ data check
# The shipped NONMEM file must hold exactly R's Theoph: same subjects, times, concentrations, weights, doses.
csv_check <- list(path = "pkpd/datasets/theoph.csv", checked = FALSE)
if (file.exists(csv_path)) {
  nm <- read.csv(csv_path)
  obs <- nm[nm$EVID == 0, ]
  dose <- nm[nm$EVID == 1, ]
  th <- as.data.frame(Theoph)
  same <- nrow(obs) == nrow(th) &&
    all(obs$ID == as.integer(as.character(th$Subject))) &&
    all(obs$TIME == th$Time) && all(obs$DV == th$conc) &&
    all(obs$WT == th$Wt) && all(obs$DOSE == th$Dose) &&
    all(obs$MDV == 0) && all(obs$CMT == 2) &&
    nrow(dose) == 12 && all(dose$TIME == 0) && all(dose$MDV == 1) && all(dose$CMT == 1) &&
    all(dose$AMT == dose$DOSE) &&
    all(dose$AMT == tapply(th$Dose, as.integer(as.character(th$Subject)), unique)[as.character(dose$ID)])
  if (!isTRUE(same)) stop("pkpd/datasets/theoph.csv differs from datasets::Theoph")
  csv_check <- list(path = "pkpd/datasets/theoph.csv", checked = TRUE, identical_to_R_Theoph = TRUE,
                    n_dose_rows = nrow(dose), n_observation_rows = nrow(obs))
  cat("theoph.csv matches datasets::Theoph (", nrow(obs), "observations,", nrow(dose), "doses)\n")
} else {
  cat("note: ", csv_path, " not found; data check skipped\n")
}

# ------------------------------------------------------------------------------------------ fits
start_code <- "c(lKe = -2.4, lKa = 0.45, lCl = -3.2)"
model_code <- list(
  ml_diag = paste0(
    "nlme(conc ~ SSfol(Dose, Time, lKe, lKa, lCl), data = Theoph, fixed = lKe + lKa + lCl ~ 1, ",
    "random = pdDiag(lKa + lCl ~ 1), start = ", start_code, ", method = \"ML\")"),
  reml_diag = paste0(
    "nlme(conc ~ SSfol(Dose, Time, lKe, lKa, lCl), data = Theoph, fixed = lKe + lKa + lCl ~ 1, ",
    "random = pdDiag(lKa + lCl ~ 1), start = ", start_code, ", method = \"REML\")"),
  ml_symm = paste0(
    "nlme(conc ~ SSfol(Dose, Time, lKe, lKa, lCl), data = Theoph, fixed = lKe + lKa + lCl ~ 1, ",
    "random = pdSymm(lKe + lKa + lCl ~ 1), start = ", start_code, ", method = \"ML\")")
)
# Fallback for the full 3x3 fit if the default control does not converge (recorded in the JSON).
symm_fallback_code <- sub(
  ", method = \"ML\")$",
  ", method = \"ML\", control = nlmeControl(maxIter = 200, pnlsMaxIter = 20, msMaxIter = 200, niterEM = 100))",
  model_code$ml_symm)

fit_code <- function(code) eval(parse(text = code))

median_elapsed <- function(code, n = N_TIMING_RUNS) {
  t <- vapply(seq_len(n), function(i) system.time(fit_code(code), gcFirst = TRUE)[["elapsed"]], numeric(1))
  list(median_s = round(median(t), 3), runs_s = round(t, 3))
}

subject_table <- function(m) {
  # rows keyed by the integer Subject label, sorted 1..12
  ids <- as.integer(rownames(m))
  o <- order(ids)
  df <- data.frame(ID = ids[o], m[o, , drop = FALSE], check.names = FALSE)
  rownames(df) <- NULL
  df
}

summarize_fit <- function(fit, code) {
  s <- summary(fit)
  tt <- s$tTable
  sigma <- fit$sigma
  psi <- pdMatrix(fit$modelStruct$reStruct[[1]]) * sigma^2      # covariance of the random effects
  sds <- sqrt(diag(psi))
  corr <- psi / outer(sds, sds)
  vc <- VarCorr(fit)                                              # printed values, for a cross-check
  vc_sd <- suppressWarnings(as.numeric(vc[, "StdDev"]))
  stopifnot(max(abs(vc_sd - c(sds, sigma)) / c(sds, sigma)) < 1e-3)
  ll <- logLik(fit)
  list(
    code = code,
    method = fit$method,
    fixed_effects = as.list(fixef(fit)),
    # summary()'s standard errors: for ML fits nlme multiplies them by sqrt(N / (N - p)) (adjustSigma = TRUE);
    # the unadjusted ones are sqrt(diag(fit$varFix)), the approximate covariance of the fixed effects.
    fixed_effects_se = as.list(tt[, "Std.Error"]),
    fixed_effects_se_unadjusted = as.list(sqrt(diag(fit$varFix))),
    fixed_effects_cov = unname(fit$varFix),
    fixed_effects_t = as.list(tt[, "t-value"]),
    fixed_effects_df = as.list(tt[, "DF"]),
    random_effect_sd = as.list(sds),
    random_effect_cov = psi,
    random_effect_corr = corr,
    random_effect_names = rownames(psi),
    residual_sd = sigma,
    logLik = as.numeric(ll),
    logLik_df = attr(ll, "df"),
    AIC = AIC(fit),
    BIC = BIC(fit),
    n_observations = fit$dims$N,
    n_groups = as.integer(fit$dims$ngrps[["Subject"]]),
    n_iterations = fit$numIter,
    ranef = subject_table(as.matrix(ranef(fit))),
    coef = subject_table(as.matrix(coef(fit))),
    VarCorr_printed = unclass(vc)
  )
}

fit_with_warnings <- function(code) {
  warns <- character(0)
  fit <- withCallingHandlers(
    tryCatch(fit_code(code), error = function(e) e),
    warning = function(w) {
      warns <<- c(warns, conditionMessage(w))
      invokeRestart("muffleWarning")
    })
  list(fit = fit, warnings = warns)
}

results <- list()
for (name in names(model_code)) {
  code <- model_code[[name]]
  cat("\n=== ", name, ": ", code, "\n", sep = "")
  fw <- fit_with_warnings(code)
  fit <- fw$fit
  attempt <- list(list(code = code, ok = !inherits(fit, "error"), warnings = fw$warnings,
                       error = if (inherits(fit, "error")) conditionMessage(fit) else NULL))
  if (inherits(fit, "error") && name == "ml_symm") {
    cat("default control failed: ", conditionMessage(fit), "\n   retrying: ", symm_fallback_code, "\n")
    code <- symm_fallback_code
    fw <- fit_with_warnings(code)
    fit <- fw$fit
    attempt[[2]] <- list(code = code, ok = !inherits(fit, "error"), warnings = fw$warnings,
                         error = if (inherits(fit, "error")) conditionMessage(fit) else NULL)
  }
  if (length(fw$warnings)) cat("warnings: ", paste(fw$warnings, collapse = " | "), "\n")
  if (inherits(fit, "error")) {
    cat("FAILED: ", conditionMessage(fit), "\n")
    results[[name]] <- list(code = code, converged = FALSE, attempts = attempt)
    next
  }
  print(summary(fit))
  r <- summarize_fit(fit, code)
  r$converged <- TRUE
  r$warnings <- fw$warnings
  r$attempts <- attempt
  r$wall_time <- suppressWarnings(median_elapsed(code))
  cat(sprintf("wall time (median of %d): %.3f s\n", N_TIMING_RUNS, r$wall_time$median_s))
  results[[name]] <- r
}

# ------------------------------------------------------------------------------------------ checks
key_values <- function(r) {
  v <- c(unlist(r$fixed_effects), unlist(r$random_effect_sd), sigma = r$residual_sd, logLik = r$logLik)
  names(v) <- c(names(r$fixed_effects), paste0("sd_", names(r$random_effect_sd)), "sigma", "logLik")
  v
}

# (1) Pinheiro & Bates (2000) section 8.2, as reproduced by the script nlme ships for the book
#     (system.file("scripts", "ch08.R", package = "nlme")): fm1Theo.nlme (pdSymm 3x3, ML),
#     fm3Theo.nlme (pdDiag(lKa + lCl), ML). nlme()'s default method is "ML", so the book's fits are ML.
#     They start from the nlsList estimates, we start from `start`: estimates agree to ~1e-4.
book_code <- c(
  "fm1Theo.lis <- nlsList(conc ~ SSfol(Dose, Time, lKe, lKa, lCl), data = Theoph)",
  "fm1Theo.nlme <- nlme(fm1Theo.lis)",
  "fm2Theo.nlme <- update(fm1Theo.nlme, random = pdDiag(lKe + lKa + lCl ~ 1))",
  "fm3Theo.nlme <- update(fm2Theo.nlme, random = pdDiag(lKa + lCl ~ 1))")
book_env <- new.env()
book_warn <- character(0)
withCallingHandlers(
  for (line in book_code) eval(parse(text = line), envir = book_env),
  warning = function(w) { book_warn <<- c(book_warn, conditionMessage(w)); invokeRestart("muffleWarning") })
book <- list(
  source = paste("Pinheiro JC, Bates DM. Mixed-Effects Models in S and S-PLUS. Springer 2000, section 8.2;",
                 "code as in nlme's scripts/ch08.R"),
  code = book_code,
  warnings = book_warn)
for (pair in list(c("fm3Theo.nlme", "ml_diag"), c("fm1Theo.nlme", "ml_symm"))) {
  bf <- get(pair[1], envir = book_env)
  bv <- key_values(summarize_fit(bf, pair[1]))
  ov <- key_values(results[[pair[2]]])
  book[[pair[1]]] <- list(
    compared_with = pair[2], method = bf$method, values = as.list(bv),
    max_abs_difference = max(abs(bv - ov)),
    max_rel_difference = max(abs(bv - ov) / abs(bv)))
  cat("\n", pair[1], " (book script) vs ", pair[2], ":\n", sep = "")
  print(rbind(book = bv, this_script = ov, difference = ov - bv), digits = 7)
}
f2 <- get("fm2Theo.nlme", envir = book_env)
book$fm2Theo.nlme <- list(method = f2$method, values = as.list(key_values(summarize_fit(f2, "fm2Theo.nlme"))))

# (2) nlme's REML for this model: same fixed effects and same relative covariance Psi / sigma^2 as ML;
#     only the variance parameters change, by the factor sqrt(N / (N - p)) (N observations, p fixed effects).
ml <- results$ml_diag
rl <- results$reml_diag
N <- ml$n_observations
p <- length(ml$fixed_effects)
reml_vs_ml <- list(
  note = paste("nlme REML vs ML for pdDiag(lKa + lCl): fixed effects agree; each SD (random effects and",
               "residual) of the REML fit equals the ML one times sqrt(N / (N - p))"),
  sqrt_N_over_N_minus_p = sqrt(N / (N - p)),
  sd_ratio_reml_over_ml = as.list(c(unlist(rl$random_effect_sd), sigma = rl$residual_sd) /
                                  c(unlist(ml$random_effect_sd), sigma = ml$residual_sd)),
  max_abs_fixed_effect_difference = max(abs(unlist(rl$fixed_effects) - unlist(ml$fixed_effects))))
cat("\nREML/ML SD ratios: ", format(unlist(reml_vs_ml$sd_ratio_reml_over_ml), digits = 8),
    " sqrt(N/(N-p)) = ", format(reml_vs_ml$sqrt_N_over_N_minus_p, digits = 8), "\n")

# (3) Values quoted in the issue as "fm2Theo.nlme, REML" (not reproduced, see README): kept for the record.
issue_quoted <- c(lKe = -2.4327, lKa = 0.4509, lCl = -3.2145, sd_lKa = 0.6415, sd_lCl = 0.1679, sigma = 0.7073)
closest <- sapply(c("ml_diag", "reml_diag", "ml_symm"), function(nm) {
  v <- key_values(results[[nm]])
  v[c("lKe", "lKa", "lCl", "sd_lKa", "sd_lCl", "sigma")] - issue_quoted
})
cat("\nEach fit minus the issue-quoted values:\n"); print(t(closest), digits = 4)
issue_check <- list(
  note = paste("Values quoted in the issue as Pinheiro & Bates fm2Theo.nlme (REML). No fit reproduces them:",
               "the fixed effects match fm1Theo.nlme / ml_symm (pdSymm 3x3) to 5e-4, the SDs are within 0.3 % of ml_diag but differ at the quoted precision, and no fit matches both.",
               "In the book's script fm2Theo.nlme is pdDiag(lKe + lKa + lCl) fitted by ML."),
  quoted = as.list(issue_quoted),
  difference_fit_minus_quoted = lapply(as.data.frame(closest), function(x) as.list(setNames(x, names(issue_quoted)))))

# ------------------------------------------------------------------------------------------ output
out <- list(
  description = paste(
    "R nlme reference fits of datasets::Theoph (12 subjects, oral theophylline), one-compartment",
    "first-order absorption model SSfol(Dose, Time, lKe, lKa, lCl) with additive residual error.",
    "Generated by benchmarks/validation/theoph_nlme.R; see benchmarks/validation/README.md."),
  model = paste(
    "conc = Dose * exp(lKe + lKa - lCl) / (exp(lKa) - exp(lKe)) *",
    "(exp(-exp(lKe) * Time) - exp(-exp(lKa) * Time)) + eps;",
    "individual log-parameters = fixed effect + random effect (where present)"),
  units = list(Dose = "mg/kg", Time = "h", conc = "mg/L", Ke = "1/h", Ka = "1/h", Cl = "L/h/kg (apparent, CL/F per kg)"),
  estimation_note = paste(
    "nlme uses the Lindstrom-Bates alternating algorithm (PNLS step + LME step on a linearization",
    "around the current random-effect estimates: an FOCE-class approximation), not an exact Laplace",
    "or importance-sampling likelihood. logLik/AIC/BIC are of that linearized model."),
  r_version = R.version.string,
  nlme_version = as.character(packageVersion("nlme")),
  jsonlite_version = as.character(packageVersion("jsonlite")),
  platform = R.version$platform,
  date = format(Sys.time(), "%Y-%m-%d %H:%M:%S %Z"),
  machine = "2-core sandbox (shared with other work; timings are indicative)",
  timing_note = sprintf(
    "wall_time: elapsed seconds of system.time() around the whole nlme() call, median of %d runs in one R session",
    N_TIMING_RUNS),
  start = start_code,
  data_check = csv_check,
  fits = results,
  book_script_check = book,
  reml_vs_ml = reml_vs_ml,
  issue_quoted_values_check = issue_check
)
writeLines(toJSON(out, auto_unbox = TRUE, digits = NA, pretty = TRUE, null = "null", na = "null",
                  dataframe = "rows", matrix = "rowmajor"),
           out_path)
cat("\nwrote ", out_path, "\n")
