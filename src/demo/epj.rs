//! The simulated EPJ: pulls what is new for each municipality page by page
//! and prints it as care staff would see it, closing alarm → note loops.

use super::*;

/// What the EPJ remembers about an alarm, to show the loop closing.
struct SeenAlarm {
    what: String,
    seen: Instant,
}

/// The simulated EPJ: pulls each municipality's Observations and
/// Communications page by page, newer than what it has already seen.
pub(super) struct Epj {
    web: reqwest::Client,
    base: String,
    orgs: Vec<String>,
    population: Arc<Population>,
    stats: Arc<Stats>,
    /// (orgnr, resource type) → the highest `meta.lastUpdated` seen.
    watermark: HashMap<(String, &'static str), String>,
    seen: HashSet<String>,
    alarms: HashMap<String, SeenAlarm>,
    /// orgnr → the access token of that municipality's EPJ client.
    tokens: HashMap<String, String>,
}

impl Epj {
    /// Alarms this EPJ has seen so far.
    pub(super) fn alarms_seen(&self) -> usize {
        self.alarms.len()
    }

    pub(super) fn new(
        web: reqwest::Client,
        base: String,
        orgs: Vec<String>,
        population: Arc<Population>,
        stats: Arc<Stats>,
        tokens: HashMap<String, String>,
    ) -> Self {
        Epj {
            tokens,
            web,
            base,
            orgs,
            population,
            stats,
            watermark: HashMap::new(),
            seen: HashSet::new(),
            alarms: HashMap::new(),
        }
    }

    pub(super) async fn poll_once(&mut self) -> Result<(), BoxError> {
        for org in self.orgs.clone() {
            for rtype in ["Communication", "Observation"] {
                self.poll_search(&org, rtype).await?;
            }
        }
        Ok(())
    }

    pub(super) async fn poll_search(
        &mut self,
        org: &str,
        rtype: &'static str,
    ) -> Result<(), BoxError> {
        let key = (org.to_string(), rtype);
        let first = format!("{}/fhir/r4/{org}/{rtype}", self.base);
        let mut query = vec![("_count".to_string(), PAGE_SIZE.to_string())];
        if let Some(wm) = self.watermark.get(&key) {
            query.push(("_lastUpdated".into(), format!("gt{wm}")));
        }
        let token = self.tokens.get(org).cloned().unwrap_or_default();
        let mut request = self.web.get(&first).query(&query).bearer_auth(&token);
        for _ in 0..MAX_PAGES_PER_POLL {
            let resp = request
                .send()
                .await
                .map_err(|e| format!("GET {rtype} for {org}: {e}"))?;
            let status = resp.status();
            if !status.is_success() {
                return Err(format!("GET {rtype} for {org}: HTTP {status}").into());
            }
            let bundle: Value = resp
                .json()
                .await
                .map_err(|e| format!("{rtype} search for {org} is not JSON: {e}"))?;
            let entries = bundle["entry"].as_array().cloned().unwrap_or_default();
            for entry in &entries {
                let res = &entry["resource"];
                if let Some(lu) = res["meta"]["lastUpdated"].as_str() {
                    let newer = match self.watermark.get(&key) {
                        Some(old) => later(lu, old),
                        None => true,
                    };
                    if newer {
                        self.watermark.insert(key.clone(), lu.to_string());
                    }
                }
                self.show(res);
            }
            match next_link(&bundle) {
                Some(next) if !entries.is_empty() => {
                    request = self.web.get(self.resolve(&next)?).bearer_auth(&token);
                }
                _ => return Ok(()),
            }
        }
        Ok(())
    }

    /// Absolute `next` links must point at our own loopback hub; relative
    /// ones are taken relative to it.
    pub(super) fn resolve(&self, link: &str) -> Result<String, BoxError> {
        if link.starts_with(&self.base) {
            Ok(link.to_string())
        } else if link.starts_with('/') {
            Ok(format!("{}{link}", self.base))
        } else {
            Err(format!("next link does not point at this hub: {link}").into())
        }
    }

    pub(super) fn show(&mut self, res: &Value) {
        let rtype = res["resourceType"].as_str().unwrap_or("?");
        let id = res["id"].as_str().unwrap_or("").to_string();
        if id.is_empty() || !self.seen.insert(format!("{rtype}/{id}")) {
            return;
        }
        let who = res["subject"]["identifier"]["value"]
            .as_str()
            .map(|v| self.population.label(v))
            .unwrap_or_else(|| "no subject".into());
        let (what, at) = match rtype {
            "Observation" => {
                self.stats.seen_observations.fetch_add(1, Ordering::Relaxed);
                (observation_line(res), res["effectiveDateTime"].as_str())
            }
            "Communication" => {
                self.stats
                    .seen_communications
                    .fetch_add(1, Ordering::Relaxed);
                let category = res["category"][0]["coding"][0]["code"]
                    .as_str()
                    .unwrap_or("?");
                let line = if category == "alert" {
                    let line = alert_line(res);
                    self.alarms.insert(
                        format!("Communication/{id}"),
                        SeenAlarm {
                            what: line
                                .split(" · ")
                                .next()
                                .unwrap_or("")
                                .trim_start_matches("alert ")
                                .to_string(),
                            seen: Instant::now(),
                        },
                    );
                    line
                } else {
                    self.note_line(res)
                };
                (line, res["sent"].as_str())
            }
            other => (format!("{other} (not expected here)"), None),
        };
        let delay = at
            .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
            .map(|t| {
                let ms = (Utc::now() - t.with_timezone(&Utc)).num_milliseconds();
                format!("  [+{:.1} s after the device]", ms as f64 / 1000.0)
            })
            .unwrap_or_default();
        println!("{}  EPJ ← {rtype:<13} {what} · {who}{delay}", clock());
    }

    pub(super) fn note_line(&self, res: &Value) -> String {
        let text = payload_texts(res)
            .iter()
            .flat_map(|t| t.lines())
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .collect::<Vec<_>>()
            .join(" / ");
        match res["inResponseTo"][0]["reference"].as_str() {
            Some(r) => {
                let answered = match self.alarms.get(r) {
                    Some(a) => {
                        self.stats.loops_closed.fetch_add(1, Ordering::Relaxed);
                        format!(
                            "{} (seen {:.1} s earlier)",
                            a.what,
                            a.seen.elapsed().as_secs_f64()
                        )
                    }
                    None => r.to_string(),
                };
                format!(
                    "notification ↪ answers {answered}: \"{}\"",
                    shorten(&text, 70)
                )
            }
            None => format!("notification \"{}\"", shorten(&text, 70)),
        }
    }
}

pub(super) fn next_link(bundle: &Value) -> Option<String> {
    bundle["link"].as_array()?.iter().find_map(|l| {
        (l["relation"].as_str() == Some("next"))
            .then(|| l["url"].as_str().map(str::to_string))
            .flatten()
    })
}

/// `a` is later than `b` (both FHIR instants); unparsable values compare as text.
pub(super) fn later(a: &str, b: &str) -> bool {
    match (
        DateTime::parse_from_rfc3339(a),
        DateTime::parse_from_rfc3339(b),
    ) {
        (Ok(x), Ok(y)) => x > y,
        _ => a > b,
    }
}

/// "85354-9 blood pressure 142/88 mm[Hg]", "59408-5 SpO2 96 %", …
pub(super) fn observation_line(res: &Value) -> String {
    let coding = &res["code"]["coding"][0];
    let code = coding["code"].as_str().unwrap_or("?");
    let name = loinc_name(code)
        .map(str::to_string)
        .or_else(|| coding["display"].as_str().map(str::to_string))
        .unwrap_or_default();
    if let Some(components) = res["component"].as_array() {
        let part = |loinc: &str| {
            components
                .iter()
                .find(|c| {
                    c["code"]["coding"]
                        .as_array()
                        .is_some_and(|cs| cs.iter().any(|x| x["code"].as_str() == Some(loinc)))
                })
                .map(|c| &c["valueQuantity"])
        };
        if let (Some(s), Some(d)) = (part("8480-6"), part("8462-4")) {
            return format!(
                "{code} {name} {}/{} {}",
                number(&s["value"]),
                number(&d["value"]),
                unit(s)
            );
        }
    }
    let q = &res["valueQuantity"];
    format!("{code} {name} {} {}", number(&q["value"]), unit(q))
}

/// "alert RED 4.1 Fall, bathroom · "Fall detektert""
pub(super) fn alert_line(res: &Value) -> String {
    let severity = match res["priority"].as_str() {
        Some("stat") => "RED",
        Some("asap") => "YELLOW",
        Some("routine") => "GREEN",
        _ => "",
    };
    let mut vkp: Option<(String, String, String)> = None;
    for reason in res["reasonCode"].as_array().into_iter().flatten() {
        for c in reason["coding"].as_array().into_iter().flatten() {
            if c["system"]
                .as_str()
                .is_some_and(|s| s.contains("vkp-alert-code"))
            {
                let code = c["code"].as_str().unwrap_or("?").to_string();
                let display = c["display"].as_str().unwrap_or("").to_string();
                let meaning = sim::alarm_kind(&code)
                    .map(|k| k.meaning.to_string())
                    .unwrap_or_else(|| display.clone());
                vkp = Some((code, meaning, display));
            }
        }
    }
    let (code, meaning, display) =
        vkp.unwrap_or_else(|| ("?".into(), String::new(), String::new()));
    // The payload repeats the code's display, then the vendor's text, then
    // the zone ("Sone: …"); show the zone after the meaning and the vendor
    // text in quotes.
    let mut zone = None;
    let mut texts = Vec::new();
    for line in payload_texts(res).iter().flat_map(|t| t.lines()) {
        let line = line.trim();
        if let Some(z) = line
            .strip_prefix("Sone:")
            .or_else(|| line.strip_prefix("Zone:"))
        {
            zone = Some(z.trim().to_string());
        } else if !line.is_empty()
            && !line.eq_ignore_ascii_case(&meaning)
            && !line.eq_ignore_ascii_case(&display)
        {
            texts.push(line.to_string());
        }
    }
    let mut out = format!("alert {severity} {code} {meaning}");
    if let Some(z) = zone {
        out.push_str(", ");
        out.push_str(&z);
    }
    if !texts.is_empty() {
        out.push_str(&format!(" · \"{}\"", texts.join(" / ")));
    }
    out
}

pub(super) fn payload_texts(res: &Value) -> Vec<String> {
    res["payload"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|p| p["contentString"].as_str().map(str::to_string))
        .collect()
}

pub(super) fn loinc_name(code: &str) -> Option<&'static str> {
    Some(match code {
        "85354-9" => "blood pressure",
        "8867-4" => "heart rate",
        "59408-5" | "2708-6" => "SpO2",
        "29463-7" => "body weight",
        "8310-5" => "body temperature",
        "9279-1" => "respiratory rate",
        "15074-8" | "2339-0" => "blood glucose",
        _ => return None,
    })
}

pub(super) fn number(v: &Value) -> String {
    match v.as_f64() {
        Some(x) if x.fract() == 0.0 && x.abs() < 1e9 => format!("{}", x as i64),
        Some(x) => format!("{x}"),
        None => "?".into(),
    }
}

pub(super) fn unit(q: &Value) -> &str {
    q["code"].as_str().or(q["unit"].as_str()).unwrap_or("")
}

pub(super) fn shorten(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        s.to_string()
    } else {
        let cut: String = s.chars().take(max).collect();
        format!("{cut}…")
    }
}
