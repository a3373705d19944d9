//! Print the text of PDF files as the intake pipeline reads them (reading order, pages
//! marked): `cargo run -p verre-intake --example pdf_text -- FILE.pdf...`.

fn main() {
    let mut failed = false;
    for path in std::env::args().skip(1) {
        let pages = std::fs::read(&path)
            .map_err(|e| e.to_string())
            .and_then(|bytes| verre_intake::parse::pdf_pages(&bytes));
        match pages {
            Ok(pages) => {
                for (i, page) in pages.iter().enumerate() {
                    println!("==> {path} page {} <==\n{page}\n", i + 1);
                }
            }
            Err(e) => {
                eprintln!("{path}: {e}");
                failed = true;
            }
        }
    }
    std::process::exit(i32::from(failed));
}
