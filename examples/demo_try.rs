#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    knutepunkt::demo::run(knutepunkt::demo::DemoOptions {
        duration: std::time::Duration::from_secs(3),
        ..Default::default()
    })
    .await
}
