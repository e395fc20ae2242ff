fn main() {
    let src = std::fs::read_to_string(std::env::args().nth(1).unwrap()).unwrap();
    let (f, e) = modelc_grammar::parse(&src);
    for x in &e {
        println!(
            "{x} @{:?} help={:?}",
            x.span(),
            match x {
                modelc_grammar::SyntaxError::Unexpected { help, .. } => help.clone(),
                _ => None,
            }
        );
    }
    println!("{} items", f.items.len());
}
