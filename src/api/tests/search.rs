//! Search through the router: every parameter, bad parameters, paging
//! while writes arrive.

use super::*;

/// Oslo: three Observations (patients 1, 2, 1; three codes), an alarm
/// (patient 1) and a notification (patient 2); Bergen: one Observation.
/// The ids and seqs of Oslo's, and the hub.
struct Stored {
    h: Hub,
    o1: uuid::Uuid,
    o2: uuid::Uuid,
    o3: uuid::Uuid,
    c1: uuid::Uuid,
    c2: uuid::Uuid,
    q1: u64,
    q2: u64,
    q3: u64,
}

impl Stored {
    async fn new() -> Stored {
        let h = hub();
        let s = &h.store;
        let (o1, q1) = put(s, obs(OSLO, "o1", 1, "8867-4")).await;
        let (o2, q2) = put(s, obs(OSLO, "o2", 2, "59408-5")).await;
        let (o3, q3) = put(s, obs(OSLO, "o3", 1, "29463-7")).await;
        put(s, obs(BERGEN, "b1", 1, "8867-4")).await;
        let (c1, _) = put(s, alarm(OSLO, "c1", 1, "4.1")).await;
        let notification = Ev {
            category: "notification",
            ..alarm(OSLO, "c2", 2, "4.13")
        };
        let (c2, _) = put(s, notification).await;
        Stored {
            h,
            o1,
            o2,
            o3,
            c1,
            c2,
            q1,
            q2,
            q3,
        }
    }

    /// Oslo's Observations matching `q`, in the order answered.
    async fn search(&self, q: String) -> Vec<uuid::Uuid> {
        get(&self.h.app, &format!("{}/Observation?{q}", base(OSLO)))
            .await
            .ids()
    }

    /// Oslo's Communications matching `q`, in the order answered.
    async fn comm(&self, q: String) -> Vec<uuid::Uuid> {
        get(&self.h.app, &format!("{}/Communication?{q}", base(OSLO)))
            .await
            .ids()
    }
}

#[tokio::test]
async fn search_without_a_filter_is_this_municipality_oldest_first() {
    let f = Stored::new().await;
    assert_eq!(f.search(String::new()).await, vec![f.o1, f.o2, f.o3]);
}

#[tokio::test]
async fn search_by_patient() {
    let f = Stored::new().await;
    // Patient, by either name.
    assert_eq!(f.search(subject(1)).await, vec![f.o1, f.o3]);
    assert_eq!(
        f.search(format!(
            "patient:identifier={FNR_OID}%7C{}",
            synthetic::fnr(2)
        ))
        .await,
        vec![f.o2]
    );
    assert_eq!(f.search(subject(99)).await, NONE);
    assert_eq!(
        f.search(format!("{}&{}", subject(1), subject(2))).await,
        NONE
    );
}

#[tokio::test]
async fn search_by_code() {
    let f = Stored::new().await;
    // Codes, with and without system, ORed by comma.
    assert_eq!(f.search("code=8867-4".into()).await, vec![f.o1]);
    assert_eq!(
        f.search(format!("code={LOINC}%7C59408-5")).await,
        vec![f.o2]
    );
    assert_eq!(
        f.search("code=http://snomed.info/sct%7C59408-5".into())
            .await,
        NONE
    );
    assert_eq!(f.search("code=%7C59408-5".into()).await, NONE);
    assert_eq!(
        f.search(format!("code=8867-4,{LOINC}%7C29463-7")).await,
        vec![f.o1, f.o3]
    );
    assert_eq!(
        f.search(format!("code=29463-7&{}", subject(1))).await,
        vec![f.o3]
    );
}

#[tokio::test]
async fn search_by_category() {
    let f = Stored::new().await;
    // Category.
    assert_eq!(
        f.search("category=vital-signs".into()).await,
        vec![f.o1, f.o2, f.o3]
    );
    assert_eq!(
        f.search(
            "category=http://terminology.hl7.org/CodeSystem/observation-category%7Cvital-signs"
                .into()
        )
        .await,
        vec![f.o1, f.o2, f.o3]
    );
    assert_eq!(
        f.search("category=http://example.org%7Cvital-signs".into())
            .await,
        NONE
    );
    assert_eq!(f.search("category=alert".into()).await, NONE);
    assert_eq!(f.comm("category=alert".into()).await, vec![f.c1]);
    assert_eq!(f.comm("category=notification".into()).await, vec![f.c2]);
    assert_eq!(f.comm(format!("code={VKP}%7C4.13")).await, vec![f.c2]);
    assert_eq!(f.comm(subject(1)).await, vec![f.c1]);
}

#[tokio::test]
async fn search_by_last_updated() {
    let f = Stored::new().await;
    // _lastUpdated, every prefix, on exact instants.
    let t2 = stamp(f.q2);
    assert_eq!(f.search(format!("_lastUpdated={t2}")).await, vec![f.o2]);
    assert_eq!(f.search(format!("_lastUpdated=eq{t2}")).await, vec![f.o2]);
    assert_eq!(
        f.search(format!("_lastUpdated=ge{t2}")).await,
        vec![f.o2, f.o3]
    );
    assert_eq!(f.search(format!("_lastUpdated=gt{t2}")).await, vec![f.o3]);
    assert_eq!(
        f.search(format!("_lastUpdated=le{t2}")).await,
        vec![f.o1, f.o2]
    );
    assert_eq!(f.search(format!("_lastUpdated=lt{t2}")).await, vec![f.o1]);
    assert_eq!(
        f.search(format!(
            "_lastUpdated=ge{}&_lastUpdated=le{}",
            stamp(f.q1),
            stamp(f.q3)
        ))
        .await,
        vec![f.o1, f.o2, f.o3]
    );
    assert_eq!(
        f.search(format!(
            "_lastUpdated=gt{}&_lastUpdated=lt{}",
            stamp(f.q1),
            stamp(f.q3)
        ))
        .await,
        vec![f.o2]
    );
    // Coarser precisions: the whole year before is all earlier.
    let last_year = seq_to_time(f.q1)
        .format("%Y")
        .to_string()
        .parse::<i32>()
        .unwrap_or(2025)
        - 1;
    assert_eq!(
        f.search(format!("_lastUpdated=gt{last_year}")).await,
        vec![f.o1, f.o2, f.o3]
    );
    assert_eq!(
        f.search(format!("_lastUpdated=le{last_year}-12-31")).await,
        NONE
    );
    assert_eq!(
        f.search(format!("_lastUpdated=lt{last_year}-12")).await,
        NONE
    );
    assert_eq!(
        f.search(format!("_lastUpdated=ge{last_year}-12-31T23:59:59%2B14:00"))
            .await,
        vec![f.o1, f.o2, f.o3]
    );
}

#[tokio::test]
async fn search_sorted_and_counted() {
    let f = Stored::new().await;
    // _sort and _count.
    assert_eq!(
        f.search("_sort=-_lastUpdated".into()).await,
        vec![f.o3, f.o2, f.o1]
    );
    assert_eq!(
        f.search("_sort=_lastUpdated".into()).await,
        vec![f.o1, f.o2, f.o3]
    );
    assert_eq!(f.search("_count=2".into()).await, vec![f.o1, f.o2]);
    assert_eq!(
        f.search("_count=2&_sort=-_lastUpdated".into()).await,
        vec![f.o3, f.o2]
    );
    assert_eq!(
        f.search("_count=100000".into()).await,
        vec![f.o1, f.o2, f.o3]
    );
}

#[tokio::test]
async fn bad_parameters_are_400_and_never_echo_identifiers() {
    let h = hub();
    put(&h.store, obs(OSLO, "o1", 1, "8867-4")).await;
    let fnr = synthetic::fnr(1);
    let cases = [
        format!("subject:identifier={fnr}"),
        format!("subject:identifier=urn:oid:2.16.578.1.12.4.1.4.4%7C{fnr}"),
        format!("subject={fnr}"),
        format!("identifier={fnr}"),
        format!("{fnr}=x"),
        format!("_lastUpdated={fnr}"),
        format!("code={fnr}&code=x"),
        "status=final".into(),
        "_include=Observation:subject".into(),
        "_count=0".into(),
        "_count=-1".into(),
        "_count=ten".into(),
        "_sort=date".into(),
        "_lastUpdated=ne2024".into(),
        "_lastUpdated=2024-03-01T10:00:00".into(),
        "_cursor=garbage".into(),
        "code:text=pulse".into(),
        "category=alert,notification".into(),
        "code=".into(),
        "a=%zz".into(),
    ];
    for q in cases {
        let msg = get(&h.app, &format!("{}/Observation?{q}", base(OSLO)))
            .await
            .outcome(StatusCode::BAD_REQUEST);
        assert!(!msg.contains(&fnr), "{q}: {msg}");
        assert!(!msg.is_empty());
    }
    let msg = get(
        &h.app,
        &format!("{}/Observation?subject:identifier={fnr}", base(OSLO)),
    )
    .await
    .outcome(StatusCode::BAD_REQUEST);
    assert!(msg.contains("system|value"), "{msg}");
    let msg = get(&h.app, &format!("{}/Observation?status=final", base(OSLO)))
        .await
        .outcome(StatusCode::BAD_REQUEST);
    assert!(
        msg.contains("unsupported search parameter") && msg.contains("_lastUpdated"),
        "{msg}"
    );
}

/// Pages through a search by following `next` links, calling `between`
/// after every page, and returns all ids seen and the number of pages.
async fn page_through<F>(h: &Hub, first: &str, mut between: F) -> (Vec<uuid::Uuid>, usize)
where
    F: AsyncFnMut(usize),
{
    let mut ids = Vec::new();
    let mut pages = 0;
    let mut a = get(&h.app, first).await;
    loop {
        pages += 1;
        ids.extend(a.ids());
        let self_link = a.link("self").unwrap_or_default();
        assert!(self_link.starts_with(&format!("http://{HOST}/fhir/r4/{OSLO}/Observation?")));
        between(pages).await;
        match a.link("next") {
            Some(next) => {
                assert!(next.contains("_cursor="), "{next}");
                a = follow(&h.app, &next).await;
            }
            None => break,
        }
        assert!(pages < 100, "paging does not end");
    }
    (ids, pages)
}

#[tokio::test]
async fn paging_neither_skips_nor_repeats_while_writes_arrive() {
    let h = hub();
    let mut expected = Vec::new();
    for i in 0..7 {
        expected.push(
            put(&h.store, obs(OSLO, format!("p{i}"), 1, "8867-4"))
                .await
                .0,
        );
    }
    // Noise that must not show up: another patient, another municipality.
    put(&h.store, obs(OSLO, "noise1", 2, "8867-4")).await;
    put(&h.store, obs(BERGEN, "noise2", 1, "8867-4")).await;

    let first = format!("{}/Observation?{}&_count=3", base(OSLO), subject(1));
    let store = h.store.clone();
    let mut written = Vec::new();
    let (ids, pages) = page_through(&h, &first, async |page| {
        // New resources for the same patient arrive between pages.
        if page <= 2 {
            for j in 0..2 {
                let ev = obs(OSLO, format!("late{page}-{j}"), 1, "8867-4");
                written.push(put(&store, ev).await.0);
            }
        }
    })
    .await;
    expected.extend(written);
    assert_eq!(
        ids, expected,
        "ascending paging must see every resource once, in order"
    );
    assert_eq!(pages, 4); // 11 resources, 3 per page

    // The next link repeats the query and the page size.
    let a = get(&h.app, &first).await;
    let next = a.link("next").unwrap_or_default();
    assert!(
        next.contains("_count=3") && next.contains("subject:identifier="),
        "{next}"
    );
}

#[tokio::test]
async fn descending_paging_is_stable_under_new_writes() {
    let h = hub();
    let mut stored = Vec::new();
    for i in 0..8 {
        stored.push(
            put(&h.store, obs(OSLO, format!("d{i}"), 1, "8867-4"))
                .await
                .0,
        );
    }
    let first = format!("{}/Observation?_sort=-_lastUpdated&_count=3", base(OSLO));
    let store = h.store.clone();
    let (ids, pages) = page_through(&h, &first, async |page| {
        // Newer resources land above the cursor: not part of this walk.
        let ev = obs(OSLO, format!("new{page}"), 1, "8867-4");
        put(&store, ev).await;
    })
    .await;
    stored.reverse();
    assert_eq!(ids, stored);
    assert_eq!(pages, 3);
    // A descending cursor cannot be used for an ascending walk.
    let a = get(&h.app, &first).await;
    let next = a.link("next").unwrap_or_default();
    let flipped = next.replace("_sort=-_lastUpdated", "_sort=_lastUpdated");
    let msg = follow(&h.app, &flipped)
        .await
        .outcome(StatusCode::BAD_REQUEST);
    assert!(msg.contains("_sort"), "{msg}");
}
